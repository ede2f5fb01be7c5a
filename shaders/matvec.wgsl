// Dequantizing matrix-vector product, the decode hot path: y[row] = sum_k W[row, k] x[k]
// for the rows of one chunk of W. One workgroup per row; its threads stride over the row's
// 32-weight units, dequantize each in registers (`decode_unit`, from common/dequant.wgsl)
// and reduce their partial sums in workgroup memory (common/reduce.wgsl).

struct Params {
    ncols: u32,      // weights per row (= length of x)
    nrows: u32,      // rows in this chunk
    row_bytes: u32,  // bytes per row of W
    y_offset: u32,   // index in y of the chunk's first row
    units: u32,      // 32-weight units per row = ceil(ncols / 32)
    grid_x: u32,     // workgroups along x (row = id.x + id.y * grid_x)
    _pad0: u32,
    _pad1: u32,
}

@group(0) @binding(0) var<storage, read> w: array<u32>;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read_write> y: array<f32>;
@group(0) @binding(3) var<uniform> p: Params;

@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let row = wid.x + wid.y * p.grid_x;
    if (row >= p.nrows) {
        return;
    }
    let rb = row * p.row_bytes;
    var acc = 0.0;
    for (var u = lid.x; u < p.units; u += WG) {
        decode_unit(rb, u, p.ncols);
        let xb = u * 32u;
        let n = min(32u, p.ncols - xb);
        for (var i = 0u; i < n; i++) {
            acc += dq[i] * x[xb + i];
        }
    }
    let total = wg_sum(lid.x, acc);
    if (lid.x == 0u) {
        y[p.y_offset + row] = total;
    }
}
