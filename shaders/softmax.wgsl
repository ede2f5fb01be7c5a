// Row-wise softmax in place, with an input scale: x = softmax(scale * x) per row. The max
// is subtracted first so that exp never overflows. One workgroup per row, reductions
// from common/reduce.wgsl.

struct Params {
    ncols: u32,
    nrows: u32,
    scale: f32,
    grid_x: u32,
}

@group(0) @binding(0) var<storage, read_write> x: array<f32>;
@group(0) @binding(1) var<uniform> p: Params;

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
    let m = wg_max(lid.x, mx);
    var sum = 0.0;
    for (var i = lid.x; i < p.ncols; i += WG) {
        let e = exp(x[base + i] * p.scale - m);
        x[base + i] = e;
        sum += e;
    }
    let inv = 1.0 / wg_sum(lid.x, sum);
    for (var i = lid.x; i < p.ncols; i += WG) {
        x[base + i] *= inv;
    }
}
