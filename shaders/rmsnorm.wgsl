// RMSNorm (Zhang & Sennrich 2019), as in llama: y = x / sqrt(mean(x^2) + eps) * weight,
// per row. One workgroup per row, threads stride over columns, tree reduction
// (common/reduce.wgsl).

struct Params {
    ncols: u32,
    nrows: u32,
    eps: f32,
    grid_x: u32,
}

@group(0) @binding(0) var<storage, read> x: array<f32>;
@group(0) @binding(1) var<storage, read> weight: array<f32>;
@group(0) @binding(2) var<storage, read_write> y: array<f32>;
@group(0) @binding(3) var<uniform> p: Params;

@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let row = wid.x + wid.y * p.grid_x;
    if (row >= p.nrows) {
        return;
    }
    let base = row * p.ncols;
    var ss = 0.0;
    for (var i = lid.x; i < p.ncols; i += WG) {
        let v = x[base + i];
        ss += v * v;
    }
    let scale = inverseSqrt(wg_sum(lid.x, ss) / f32(p.ncols) + p.eps);
    for (var i = lid.x; i < p.ncols; i += WG) {
        y[base + i] = x[base + i] * scale * weight[i];
    }
}
