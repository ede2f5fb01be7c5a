// Dequantizing matrix-vector product, the decode hot path: y[row] = sum_k W[row, k] x[k]
// for the rows of one chunk of W. A workgroup of 64 threads takes 64 / lanes rows; a row's
// `lanes` threads stride over its 32-weight units, each dequantized and dotted with x in
// registers (`unit_dot`: fused per type in common/dot_unit.wgsl, or `decode_unit` from
// common/dequant.wgsl and a loop), and reduce their partial sums in workgroup memory.

struct Params {
    ncols: u32,      // weights per row (= length of x)
    nrows: u32,      // rows in this chunk
    row_bytes: u32,  // bytes per row of W
    y_offset: u32,   // index in y of the chunk's first row
    units: u32,      // 32-weight units per row = ceil(ncols / 32)
    grid_x: u32,     // workgroups along x (group = id.x + id.y * grid_x)
    lanes: u32,      // threads per row: a power of two from 4 to 64
    _pad0: u32,
}

@group(0) @binding(0) var<storage, read> w: array<u32>;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read_write> y: array<f32>;
@group(0) @binding(3) var<uniform> p: Params;

var<workgroup> part: array<f32, 64>;

@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let lane = lid.x % p.lanes;
    let row = (wid.x + wid.y * p.grid_x) * (64u / p.lanes) + lid.x / p.lanes;
    var acc = 0.0;
    if (row < p.nrows) {
        let rb = row * p.row_bytes;
        for (var u = lane; u < p.units; u += p.lanes) {
            acc += unit_dot(rb, u, p.ncols, u * 32u);
        }
    }
    // Each row's lanes are adjacent: a tree over its segment of `part`.
    part[lid.x] = acc;
    workgroupBarrier();
    for (var s = p.lanes / 2u; s > 0u; s >>= 1u) {
        if (lane < s) {
            part[lid.x] += part[lid.x + s];
        }
        workgroupBarrier();
    }
    if (lane == 0u && row < p.nrows) {
        y[p.y_offset + row] = part[lid.x];
    }
}
