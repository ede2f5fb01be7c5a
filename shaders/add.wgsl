// In-place accumulate with broadcast: a[i] += b[i % b_len]. With b_len = n it is the
// residual connection (x += f(x)); with b_len = row length it adds a bias to every row.

struct Params {
    n: u32,
    b_len: u32,
    grid_x: u32,
    _pad0: u32,
}

@group(0) @binding(0) var<storage, read_write> a: array<f32>;
@group(0) @binding(1) var<storage, read> b: array<f32>;
@group(0) @binding(2) var<uniform> p: Params;

@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let i = (wid.x + wid.y * p.grid_x) * 64u + lid.x;
    if (i >= p.n) {
        return;
    }
    a[i] += b[i % p.b_len];
}
