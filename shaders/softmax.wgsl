// Row-wise softmax in place, with an input scale: x = softmax(scale * x) per row. The max
// is subtracted first so that exp never overflows. One workgroup per row.

struct Params {
    ncols: u32,
    nrows: u32,
    scale: f32,
    grid_x: u32,
}

@group(0) @binding(0) var<storage, read_write> x: array<f32>;
@group(0) @binding(1) var<uniform> p: Params;

const WG: u32 = 64u;
var<workgroup> partial: array<f32, WG>;

@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let row = wid.x + wid.y * p.grid_x;
    if (row >= p.nrows) {
        return;
    }
    let base = row * p.ncols;
    var mx = -3.4e38;
    for (var i = lid.x; i < p.ncols; i += WG) {
        mx = max(mx, x[base + i] * p.scale);
    }
    partial[lid.x] = mx;
    workgroupBarrier();
    for (var s = WG / 2u; s > 0u; s >>= 1u) {
        if (lid.x < s) {
            partial[lid.x] = max(partial[lid.x], partial[lid.x + s]);
        }
        workgroupBarrier();
    }
    let m = partial[0];
    workgroupBarrier();
    var sum = 0.0;
    for (var i = lid.x; i < p.ncols; i += WG) {
        let e = exp(x[base + i] * p.scale - m);
        x[base + i] = e;
        sum += e;
    }
    partial[lid.x] = sum;
    workgroupBarrier();
    for (var s = WG / 2u; s > 0u; s >>= 1u) {
        if (lid.x < s) {
            partial[lid.x] += partial[lid.x + s];
        }
        workgroupBarrier();
    }
    let inv = 1.0 / partial[0];
    for (var i = lid.x; i < p.ncols; i += WG) {
        x[base + i] *= inv;
    }
}
