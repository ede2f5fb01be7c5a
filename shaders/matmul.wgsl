// Dequantizing matrix-matrix product for prefill: Y[m, n] = sum_k X[m, k] W[n, k] for the
// rows n of one chunk of W (Y is row-major with leading dimension ldy). Workgroups compute
// 32x32 tiles of Y in steps of one 32-weight unit along k: 32 threads dequantize one unit
// of a W row each into workgroup memory, all 256 threads load the X tile, then each thread
// accumulates a 2x2 block of outputs.

struct Params {
    m: u32,          // rows of X (tokens)
    n: u32,          // rows of W in this chunk
    k: u32,          // columns of X and W
    row_bytes: u32,  // bytes per row of W
    n_offset: u32,   // column of Y of the chunk's first row
    ldy: u32,        // row stride of Y
    units: u32,      // ceil(k / 32)
    _pad0: u32,
}

@group(0) @binding(0) var<storage, read> w: array<u32>;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read_write> y: array<f32>;
@group(0) @binding(3) var<uniform> p: Params;

const T: u32 = 32u;
var<workgroup> xs: array<f32, 1024>; // [T rows of X][32 k]
var<workgroup> ws: array<f32, 1024>; // [T rows of W][32 k]

@compute @workgroup_size(16, 16)
fn main(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(local_invocation_id) lid: vec3<u32>,
    @builtin(local_invocation_index) li: u32,
) {
    let m0 = wid.y * T;
    let n0 = wid.x * T;
    var acc = array<f32, 4>(0.0, 0.0, 0.0, 0.0);
    for (var u = 0u; u < p.units; u++) {
        let k0 = u * 32u;
        for (var t = 0u; t < 4u; t++) {
            let idx = li + 256u * t;
            let r = idx / 32u;
            let c = idx % 32u;
            let gm = m0 + r;
            let gk = k0 + c;
            var v = 0.0;
            if (gm < p.m && gk < p.k) {
                v = x[gm * p.k + gk];
            }
            xs[idx] = v;
        }
        if (li < T) {
            let gn = n0 + li;
            if (gn < p.n) {
                decode_unit(gn * p.row_bytes, u, p.k);
                for (var i = 0u; i < 32u; i++) {
                    ws[li * 32u + i] = dq[i];
                }
            } else {
                for (var i = 0u; i < 32u; i++) {
                    ws[li * 32u + i] = 0.0;
                }
            }
        }
        workgroupBarrier();
        let a0 = (lid.y * 2u) * 32u;
        let a1 = a0 + 32u;
        let b0 = (lid.x * 2u) * 32u;
        let b1 = b0 + 32u;
        for (var kk = 0u; kk < 32u; kk++) {
            let xa = xs[a0 + kk];
            let xb = xs[a1 + kk];
            let wa = ws[b0 + kk];
            let wb = ws[b1 + kk];
            acc[0] += xa * wa;
            acc[1] += xa * wb;
            acc[2] += xb * wa;
            acc[3] += xb * wb;
        }
        workgroupBarrier();
    }
    for (var i = 0u; i < 2u; i++) {
        for (var j = 0u; j < 2u; j++) {
            let gm = m0 + lid.y * 2u + i;
            let gn = n0 + lid.x * 2u + j;
            if (gm < p.m && gn < p.n) {
                y[gm * p.ldy + p.n_offset + gn] = acc[i * 2u + j];
            }
        }
    }
}
