// Buffer copy in 16-byte words, dst[i] = src[i]: the kernel `kvedge bench --roofline`
// times to measure the device's memory bandwidth (bytes read + bytes written).

struct Params {
    n: u32,
    grid_x: u32,
    _pad0: u32,
    _pad1: u32,
}

@group(0) @binding(0) var<storage, read> src: array<vec4<u32>>;
@group(0) @binding(1) var<storage, read_write> dst: array<vec4<u32>>;
@group(0) @binding(2) var<uniform> p: Params;

@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let i = (wid.x + wid.y * p.grid_x) * 256u + lid.x;
    if (i >= p.n) {
        return;
    }
    dst[i] = src[i];
}
