// In-place orthonormal Walsh-Hadamard rotation of rows: each row of `dim` values is cut
// into segments of `seg` (a power of two) and every segment is multiplied by H_seg /
// sqrt(seg). Applied to K before it is stored in a quantized cache and to Q before
// attention, so that q·k is unchanged while outlier channels of K are spread over the
// segment before per-block quantization (as QuaRot and Palu do). One thread per row.

struct Params {
    n_rows: u32,
    dim: u32,
    seg: u32,
    grid_x: u32,
}

@group(0) @binding(0) var<storage, read_write> x: array<f32>;
@group(0) @binding(1) var<uniform> p: Params;

const MAX_DIM: u32 = 256u;

@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let row = (wid.x + wid.y * p.grid_x) * 64u + lid.x;
    if (row >= p.n_rows) {
        return;
    }
    let base = row * p.dim;
    var v: array<f32, MAX_DIM>;
    for (var i = 0u; i < p.dim; i++) {
        v[i] = x[base + i];
    }
    for (var s0 = 0u; s0 < p.dim; s0 += p.seg) {
        for (var h = 1u; h < p.seg; h *= 2u) {
            for (var i = 0u; i < p.seg; i += 2u * h) {
                for (var j = s0 + i; j < s0 + i + h; j++) {
                    let a = v[j];
                    let b = v[j + h];
                    v[j] = a + b;
                    v[j + h] = a - b;
                }
            }
        }
    }
    let norm = inverseSqrt(f32(p.seg));
    for (var i = 0u; i < p.dim; i++) {
        x[base + i] = v[i] * norm;
    }
}
