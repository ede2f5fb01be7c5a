// Embedding gather: out[t, :] = dequant(table[ids[t], :]) for the tokens whose row lies in
// this chunk of the table ([row_begin, row_begin + nrows)); dispatched once per chunk.
// One workgroup per token, threads over the row's 32-weight units.

struct Params {
    ncols: u32,
    row_bytes: u32,
    n_tokens: u32,
    row_begin: u32,
    nrows: u32,
    units: u32,
    grid_x: u32,
    _pad0: u32,
}

@group(0) @binding(0) var<storage, read> w: array<u32>;
@group(0) @binding(1) var<storage, read> ids: array<u32>;
@group(0) @binding(2) var<storage, read_write> out: array<f32>;
@group(0) @binding(3) var<uniform> p: Params;

@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let t = wid.x + wid.y * p.grid_x;
    if (t >= p.n_tokens) {
        return;
    }
    let id = ids[t];
    if (id < p.row_begin || id - p.row_begin >= p.nrows) {
        return;
    }
    let rb = (id - p.row_begin) * p.row_bytes;
    for (var u = lid.x; u < p.units; u += 64u) {
        decode_unit(rb, u, p.ncols);
        let n = min(32u, p.ncols - u * 32u);
        for (var i = 0u; i < n; i++) {
            out[t * p.ncols + u * 32u + i] = dq[i];
        }
    }
}
