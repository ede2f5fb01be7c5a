// Attention-Gate scores (runtime/src/kernels/kv_gate.rs has the algorithm and the CPU
// reference): per token, q/k/v projections of the layer's normalized hidden state, a
// causal attention over a sliding window of `window` positions, an output projection to
// one logit per KV head and a sigmoid, written as the slot scores of the `gate` policy.
//
// Three modes, dispatched in order for a chunk of m tokens at positions pos0..:
// 0 project: one thread per (token, row of q|k|v): qkv[t][r] = W[r] . xn[t];
// 1 score:   one thread per token: the window's keys and values come from this chunk's
//            qkv rows (positions >= pos0) or from the ring (older positions, which the
//            chunk has not overwritten yet); score[kv][slot0 + t] = sigmoid(z[kv]);
// 2 ring:    one thread per (token, row of k|v) for the chunk's last `window` tokens:
//            ring[(pos0 + t) % window] = (k, v) of token t.
//
// `w` holds [3·hd][n_embd] (q, k, v rows), then wo [n_kv][hd], then bo [n_kv].

struct Params {
    n_embd: u32,
    hd: u32,
    heads: u32,
    head_dim: u32,
    n_kv: u32,
    window: u32,
    m: u32,
    pos0: u32,
    slot0: u32,
    capacity: u32,
    mode: u32,
    _pad: u32,
}

@group(0) @binding(0) var<storage, read> xn: array<f32>;
@group(0) @binding(1) var<storage, read> w: array<f32>;
@group(0) @binding(2) var<storage, read_write> qkv: array<f32>;
@group(0) @binding(3) var<storage, read_write> ring: array<f32>;
@group(0) @binding(4) var<storage, read_write> score: array<f32>;
@group(0) @binding(5) var<uniform> p: Params;

const MAX_HD: u32 = 64u;

// Element d of the key (v_off 0) or value (v_off hd) at position j.
fn kv_at(j: u32, v_off: u32, d: u32) -> f32 {
    if (j >= p.pos0) {
        return qkv[(j - p.pos0) * 3u * p.hd + p.hd + v_off + d];
    }
    return ring[(j % p.window) * 2u * p.hd + v_off + d];
}

@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
    let i = gid.x;
    let hd = p.hd;
    if (p.mode == 0u) {
        if (i >= p.m * 3u * hd) {
            return;
        }
        let t = i / (3u * hd);
        let r = i % (3u * hd);
        var acc = 0.0;
        for (var c = 0u; c < p.n_embd; c++) {
            acc += w[r * p.n_embd + c] * xn[t * p.n_embd + c];
        }
        qkv[i] = acc;
    } else if (p.mode == 1u) {
        if (i >= p.m) {
            return;
        }
        let pos = p.pos0 + i;
        let first = select(0u, pos + 1u - p.window, pos + 1u > p.window);
        let scale = 1.0 / sqrt(f32(p.head_dim));
        var o: array<f32, MAX_HD>;
        for (var h = 0u; h < p.heads; h++) {
            let base = h * p.head_dim;
            var mx = -3.4e38;
            for (var j = first; j <= pos; j++) {
                var s = 0.0;
                for (var d = 0u; d < p.head_dim; d++) {
                    s += qkv[i * 3u * hd + base + d] * kv_at(j, 0u, base + d);
                }
                mx = max(mx, s * scale);
            }
            var sum = 0.0;
            for (var d = 0u; d < p.head_dim; d++) {
                o[base + d] = 0.0;
            }
            for (var j = first; j <= pos; j++) {
                var s = 0.0;
                for (var d = 0u; d < p.head_dim; d++) {
                    s += qkv[i * 3u * hd + base + d] * kv_at(j, 0u, base + d);
                }
                let e = exp(s * scale - mx);
                sum += e;
                for (var d = 0u; d < p.head_dim; d++) {
                    o[base + d] += e * kv_at(j, hd, base + d);
                }
            }
            for (var d = 0u; d < p.head_dim; d++) {
                o[base + d] /= sum;
            }
        }
        let wo = 3u * hd * p.n_embd;
        let bo = wo + p.n_kv * hd;
        for (var kv = 0u; kv < p.n_kv; kv++) {
            var z = w[bo + kv];
            for (var d = 0u; d < hd; d++) {
                z += w[wo + kv * hd + d] * o[d];
            }
            score[kv * p.capacity + p.slot0 + i] = 1.0 / (1.0 + exp(-z));
        }
    } else {
        if (i >= p.m * 2u * hd) {
            return;
        }
        let t = i / (2u * hd);
        let r = i % (2u * hd);
        if (t + p.window >= p.m) {
            ring[((p.pos0 + t) % p.window) * 2u * hd + r] = qkv[t * 3u * hd + hd + r];
        }
    }
}
