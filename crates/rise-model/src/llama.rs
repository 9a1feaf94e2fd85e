//! The Llama-family decoder (Llama 2/3, Mistral, Qwen2, SmolLM) in one file.
//!
//! Parameters live in a tch `VarStore` under their Hugging Face names
//! (`model.layers.3.self_attn.q_proj.weight`, …), so checkpoint I/O is a name-for-name copy.
//! The arithmetic follows transformers' `modeling_llama.py` step for step (RMSNorm in fp32,
//! rotate-half RoPE with fp32 frequencies, SwiGLU), which is what makes 1e-4 fp32 parity hold.
//!
//! Mixed precision is explicit rather than autocast: `set_compute_kind(BFloat16)` keeps fp32
//! master weights and casts them per use, which is what CUDA autocast would do, but with bf16
//! (tch's autocast switch only enables the fp16 default) and without global state.
use std::ops::Deref;
use std::sync::atomic::{AtomicBool, Ordering};

use tch::nn::Init;
use tch::{nn, Device, Kind, TchError, Tensor};

use crate::config::{LlamaConfig, RopeScaling};

/// One decoder layer's parameters.
#[derive(Debug)]
struct Layer {
    input_norm: Tensor,
    q: Tensor,
    k: Tensor,
    v: Tensor,
    o: Tensor,
    q_bias: Option<Tensor>,
    k_bias: Option<Tensor>,
    v_bias: Option<Tensor>,
    o_bias: Option<Tensor>,
    post_norm: Tensor,
    gate: Tensor,
    up: Tensor,
    down: Tensor,
    gate_bias: Option<Tensor>,
    up_bias: Option<Tensor>,
    down_bias: Option<Tensor>,
}

/// Projections that read the same input (q, k, v; gate, up) are declared as row ranges of one
/// buffer, so that a forward pass can make one product where it would make two or three: at
/// batch 1 a decode step of a 30-layer model then makes 90 fewer, each a pass over the
/// activations and a wake-up of the thread pool. The variables keep their Hugging Face names
/// and stay ordinary leaves; only their storage is shared.
///
/// No stacked tensor is kept: [`stacked_view`] finds the rows adjacent in one storage at each
/// use, so whatever moves a variable's data (the trainer's flat buffer) can never leave a stale
/// copy behind, and costs no memory.
fn stack_rows(parts: &[&Tensor]) {
    let buffer = Tensor::cat(parts, 0);
    tch::no_grad(|| {
        let mut offset = 0;
        for part in parts {
            let n = part.size()[0];
            part.shallow_clone().set_data(&buffer.narrow(0, offset, n));
            offset += n;
        }
    });
}

/// `parts` as one tensor of their stacked rows, a view of their shared storage, when they
/// lie there back to back; `None` otherwise. Also `None` where autograd records the forward
/// pass and a part requires a gradient: the backward of such a view would allocate the
/// whole storage (the trainer's flat buffer) per use.
fn stacked_view(parts: &[&Tensor]) -> Option<Tensor> {
    let first = parts.first()?;
    if parts.iter().any(|p| p.requires_grad()) && grad_enabled() {
        return None;
    }
    let (kind, device) = (first.kind(), first.device());
    let row: i64 = first.size().iter().skip(1).product();
    let elem = kind.elt_size_in_bytes();
    let mut next = first.data_ptr() as usize;
    let mut rows = 0;
    for part in parts {
        let size = part.size();
        if part.kind() != kind
            || part.device() != device
            || !part.is_contiguous()
            || size.iter().skip(1).product::<i64>() != row
            || part.data_ptr() as usize != next
        {
            return None;
        }
        rows += size[0];
        next += (size[0] * row) as usize * elem;
    }
    let mut shape = first.size();
    shape[0] = rows;
    let strides: Vec<i64> = first.stride();
    // Out of the storage's bounds (parts adjacent in memory by chance, in different
    // allocations) is an error, hence the fallible call.
    first
        .f_as_strided(shape.as_slice(), strides.as_slice(), None)
        .ok()
}

/// Whether autograd records operations now (libtorch's thread-local grad mode).
fn grad_enabled() -> bool {
    // SAFETY: sets the thread-local flag and returns its previous value; it is set back at once.
    unsafe {
        let previous = torch_sys::at_grad_set_enabled(0);
        torch_sys::at_grad_set_enabled(previous);
        previous != 0
    }
}

/// `x · wᵀ (+ b)` for stacked weights, split back into parts of `rows` outputs each.
fn project_stacked(
    x: &Tensor,
    w: &Tensor,
    b: Option<&Tensor>,
    rows: &[i64],
    kind: Kind,
) -> Vec<Tensor> {
    let y = linear(x, w, b, kind);
    let mut offset = 0;
    rows.iter()
        .map(|&n| {
            let part = y.narrow(-1, offset, n);
            offset += n;
            part
        })
        .collect()
}

impl Layer {
    /// q, k, v from one product when they are stacked (see [`stacked_view`]), else one each.
    fn qkv(&self, h: &Tensor, kind: Kind) -> (Tensor, Tensor, Tensor) {
        let parts = [&self.q, &self.k, &self.v];
        let biases = [
            self.q_bias.as_ref(),
            self.k_bias.as_ref(),
            self.v_bias.as_ref(),
        ];
        if let Some((w, b)) = stacked_with_biases(&parts, &biases) {
            let rows = parts.map(|p| p.size()[0]);
            let mut out = project_stacked(h, &w, b.as_ref(), &rows, kind).into_iter();
            if let (Some(q), Some(k), Some(v)) = (out.next(), out.next(), out.next()) {
                return (q, k, v);
            }
        }
        (
            linear(h, &self.q, biases[0], kind),
            linear(h, &self.k, biases[1], kind),
            linear(h, &self.v, biases[2], kind),
        )
    }

    /// SwiGLU's `silu(gate) * up`, from one product when gate and up are stacked.
    fn gated(&self, h: &Tensor, kind: Kind) -> Tensor {
        let parts = [&self.gate, &self.up];
        let biases = [self.gate_bias.as_ref(), self.up_bias.as_ref()];
        if let Some((w, b)) = stacked_with_biases(&parts, &biases) {
            let rows = parts.map(|p| p.size()[0]);
            if let [gate, up] = project_stacked(h, &w, b.as_ref(), &rows, kind).as_slice() {
                return gate.silu() * up;
            }
        }
        linear(h, &self.gate, biases[0], kind).silu() * linear(h, &self.up, biases[1], kind)
    }
}

/// The stacked weights of `parts` and, when they have biases, the stacked biases; `None`
/// unless all of it is stacked.
fn stacked_with_biases(
    parts: &[&Tensor],
    biases: &[Option<&Tensor>],
) -> Option<(Tensor, Option<Tensor>)> {
    let w = stacked_view(parts)?;
    match biases.iter().copied().collect::<Option<Vec<&Tensor>>>() {
        Some(bs) => Some((w, Some(stacked_view(&bs)?))),
        None if biases.iter().all(Option::is_none) => Some((w, None)),
        None => None,
    }
}

/// The decoder. Build it with [`Llama::new`] on a `VarStore` path, or get a [`Model`] from
/// [`crate::checkpoint::load`] / [`crate::checkpoint::init_random`].
#[derive(Debug)]
pub struct Llama {
    cfg: LlamaConfig,
    embed: Tensor,
    layers: Vec<Layer>,
    norm: Tensor,
    /// The embedding itself when tied.
    lm_head: Tensor,
    /// fp32 inverse RoPE frequencies, `[head_dim / 2]`, already rescaled.
    inv_freq: Tensor,
    compute_kind: Kind,
    device: Device,
    /// Set once the CUDA memory-efficient kernel refused our inputs, so it is not retried.
    efficient_unusable: AtomicBool,
}

/// A preallocated key/value cache: per layer `[batch, kv_heads, capacity, head_dim]`.
///
/// All rows share one write offset (`len`): batches are left-padded, and the attention
/// mask, not the cache layout, says which slots are real.
#[derive(Debug)]
pub struct KvCache {
    k: Vec<Tensor>,
    v: Vec<Tensor>,
    len: i64,
    capacity: i64,
}

impl KvCache {
    /// An empty cache for `batch` rows of up to `capacity` tokens each. Fails when an
    /// allocation fails (a device out of memory: [`LlamaConfig::check_sampling`] bounds only
    /// host memory, since libtorch does not say how much a device has).
    pub fn new(
        cfg: &LlamaConfig,
        batch: usize,
        capacity: usize,
        kind: Kind,
        device: Device,
    ) -> Result<Self, TchError> {
        let shape = [
            batch as i64,
            cfg.num_key_value_heads as i64,
            capacity as i64,
            cfg.head_dim as i64,
        ];
        let alloc = || -> Result<Vec<Tensor>, TchError> {
            (0..cfg.num_hidden_layers)
                .map(|_| Tensor::f_zeros(shape, (kind, device)))
                .collect()
        };
        Ok(KvCache {
            k: alloc()?,
            v: alloc()?,
            len: 0,
            capacity: capacity as i64,
        })
    }

    /// Tokens already cached per row (including left padding).
    pub fn len(&self) -> usize {
        self.len as usize
    }

    /// True when nothing has been cached yet.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The most tokens a row can hold.
    pub fn capacity(&self) -> usize {
        self.capacity as usize
    }

    /// Rows in the cache.
    pub fn batch_size(&self) -> usize {
        self.k.first().map_or(0, |t| t.size()[0] as usize)
    }

    /// A cache holding the given rows (an `Int64` index tensor), in that order: repeats
    /// expand one prefill into n samples, omissions drop finished rows.
    pub fn select_rows(&self, rows: &Tensor) -> Result<KvCache, TchError> {
        let pick = |ts: &[Tensor]| -> Result<Vec<Tensor>, TchError> {
            ts.iter().map(|t| t.f_index_select(0, rows)).collect()
        };
        Ok(KvCache {
            k: pick(&self.k)?,
            v: pick(&self.v)?,
            len: self.len,
            capacity: self.capacity,
        })
    }
}

/// A model with its parameter store: what checkpoints load and save.
///
/// Derefs to [`Llama`], so `model.forward(...)` works directly.
#[derive(Debug)]
pub struct Model {
    /// The parameters, named as in Hugging Face checkpoints.
    pub vs: nn::VarStore,
    /// The network reading them.
    pub llama: Llama,
}

impl Deref for Model {
    type Target = Llama;
    fn deref(&self) -> &Llama {
        &self.llama
    }
}

impl Model {
    /// A model with zero-initialised parameters of `kind` on `device` (to be filled by a
    /// checkpoint or [`crate::checkpoint::init_random`]). Panics if an allocation fails:
    /// for a config from a user, check [`LlamaConfig::check_budget`] and use
    /// [`Model::try_zeros`].
    pub fn zeros(cfg: &LlamaConfig, device: Device, kind: Kind) -> Model {
        match Model::try_zeros(cfg, device, kind) {
            Ok(model) => model,
            Err(e) => panic!("allocating a {}-parameter model: {e}", cfg.num_parameters()),
        }
    }

    /// [`Model::zeros`], with a failed allocation (CUDA out of memory, an allocator that
    /// refuses) as an error instead of a panic.
    pub fn try_zeros(cfg: &LlamaConfig, device: Device, kind: Kind) -> Result<Model, TchError> {
        let mut vs = nn::VarStore::new(device);
        // On an empty store this only sets the dtype new variables get.
        vs.set_kind(kind);
        let llama = Llama::declare(&vs.root(), cfg, false)?;
        Ok(Model { vs, llama })
    }

    /// A model initialised as transformers initialises a fresh one, reproducibly for a
    /// seed: values are drawn in fp32 on the CPU generator, so they do not depend on
    /// `device` or `kind`. Panics if an allocation fails (see [`Model::try_random`]).
    pub fn random(cfg: &LlamaConfig, seed: u64, device: Device, kind: Kind) -> Model {
        match Model::try_random(cfg, seed, device, kind) {
            Ok(model) => model,
            Err(e) => panic!("allocating a {}-parameter model: {e}", cfg.num_parameters()),
        }
    }

    /// [`Model::random`], with a failed allocation as an error.
    pub fn try_random(
        cfg: &LlamaConfig,
        seed: u64,
        device: Device,
        kind: Kind,
    ) -> Result<Model, TchError> {
        let cpu = Model::try_zeros(cfg, Device::Cpu, Kind::Float)?;
        // libtorch's CPU generator is process-global: two threads initialising models at once
        // (parallel tests, in-process stages) would interleave their draws. Hold it while drawing.
        static GLOBAL_GENERATOR: std::sync::Mutex<()> = std::sync::Mutex::new(());
        let _generator = GLOBAL_GENERATOR.lock().unwrap_or_else(|p| p.into_inner());
        tch::manual_seed(seed as i64);
        let mut names: Vec<(String, Tensor)> = cpu.vs.variables().into_iter().collect();
        // HashMap order is random; draw in a fixed order so the seed alone decides.
        names.sort_by(|a, b| a.0.cmp(&b.0));
        tch::no_grad(|| {
            for (name, t) in names.iter_mut() {
                if !name.ends_with("norm.weight") && !name.ends_with(".bias") {
                    let _ = t.normal_(0.0, 0.02);
                }
            }
        });
        if device == Device::Cpu && kind == Kind::Float {
            // Already where and what it should be: a second copy would double the peak.
            return Ok(cpu);
        }
        let out = Model::try_zeros(cfg, device, kind)?;
        let dst = out.vs.variables();
        tch::no_grad(|| -> Result<(), TchError> {
            for (name, t) in &names {
                dst[name].shallow_clone().f_copy_(t)?;
            }
            Ok(())
        })?;
        Ok(out)
    }
}

#[cfg(test)]
fn rotate_half(x: &Tensor) -> Tensor {
    let half = x.size()[x.dim() - 1] / 2;
    let x1 = x.narrow(-1, 0, half);
    let x2 = x.narrow(-1, half, half);
    Tensor::cat(&[x2.neg(), x1], -1)
}

/// Inverse RoPE frequencies exactly as transformers computes them (fp32 throughout).
pub fn rope_inv_freq(cfg: &LlamaConfig, device: Device) -> Tensor {
    let dim = cfg.head_dim as i64;
    let exponents = Tensor::arange_start_step(0, dim, 2, (Kind::Int64, device))
        .to_kind(Kind::Float)
        / dim as f64;
    let inv_freq = Tensor::pow_scalar(cfg.rope_theta, &exponents).reciprocal();
    match &cfg.rope_scaling {
        RopeScaling::Default => inv_freq,
        RopeScaling::Linear { factor } => inv_freq / *factor,
        RopeScaling::Llama3 {
            factor,
            low_freq_factor,
            high_freq_factor,
            original_max_position_embeddings,
        } => {
            let old = *original_max_position_embeddings as f64;
            let low_freq_wavelen = old / low_freq_factor;
            let high_freq_wavelen = old / high_freq_factor;
            let wavelen = inv_freq.reciprocal() * (2.0 * std::f64::consts::PI);
            let scaled = inv_freq.where_self(&wavelen.le(low_freq_wavelen), &(&inv_freq / *factor));
            let smooth = (wavelen.reciprocal() * old - *low_freq_factor)
                / (high_freq_factor - low_freq_factor);
            let smoothed = (smooth.ones_like() - &smooth) * &scaled / *factor + &smooth * &scaled;
            let medium = wavelen
                .ge(high_freq_wavelen)
                .logical_and(&wavelen.le(low_freq_wavelen));
            smoothed.where_self(&medium, &scaled)
        }
    }
}

fn linear(x: &Tensor, w: &Tensor, b: Option<&Tensor>, kind: Kind) -> Tensor {
    // A same-kind `to_kind` copies nothing but still goes through the dispatcher, and a
    // decode step makes hundreds of them: cast only what is not in `kind` already.
    let cast_w;
    let w = if w.kind() == kind {
        w
    } else {
        cast_w = w.to_kind(kind);
        &cast_w
    };
    let cast_b;
    let b = match b {
        Some(b) if b.kind() != kind => {
            cast_b = b.to_kind(kind);
            Some(&cast_b)
        }
        other => other,
    };
    x.linear(w, b)
}

/// RoPE: `x * cos + rotate_half(x) * sin`, with `sin_signed` = sin whose first half is
/// negated, so that `rotate_half(x) * sin` = `roll(x, d / 2) * sin_signed`: the same
/// products (a negation is exact), in one call instead of four.
fn rope(x: &Tensor, cos: &Tensor, sin_signed: &Tensor) -> Tensor {
    let half = x.size()[x.dim() - 1] / 2;
    x * cos + x.roll([half], [-1]) * sin_signed
}

impl Llama {
    /// Declares the parameters under `vs` with transformers' initialisation: normal(0, 0.02)
    /// matrices, unit norm weights, zero biases. The dtype is the `VarStore`'s kind.
    /// Fails when an allocation fails (check [`LlamaConfig::check_budget`] first).
    pub fn new(vs: &nn::Path, cfg: &LlamaConfig) -> Result<Llama, TchError> {
        Self::declare(vs, cfg, true)
    }

    /// Declares the parameters; `random = false` zero-fills them (cheap, for loading).
    fn declare(vs: &nn::Path, cfg: &LlamaConfig, random: bool) -> Result<Llama, TchError> {
        let h = cfg.hidden_size as i64;
        let i = cfg.intermediate_size as i64;
        let d = cfg.head_dim as i64;
        let q_out = cfg.num_attention_heads as i64 * d;
        let kv_out = cfg.num_key_value_heads as i64 * d;
        let normal = if random {
            Init::Randn {
                mean: 0.0,
                stdev: 0.02,
            }
        } else {
            Init::Const(0.0)
        };
        let mat = |path: &nn::Path, o: i64, i: i64| path.f_var("weight", &[o, i], normal);
        let bias = |on: bool, path: &nn::Path, o: i64| {
            on.then(|| path.f_var("bias", &[o], Init::Const(0.0)))
                .transpose()
        };
        let ones = |path: &nn::Path| path.f_var("weight", &[h], Init::Const(1.0));
        let model = vs / "model";
        let embed = mat(&(&model / "embed_tokens"), cfg.vocab_size as i64, h)?;
        let layers = (0..cfg.num_hidden_layers)
            .map(|l| {
                let p = &model / "layers" / l;
                let attn = &p / "self_attn";
                let mlp = &p / "mlp";
                let (qp, kp, vp, op) = (
                    &attn / "q_proj",
                    &attn / "k_proj",
                    &attn / "v_proj",
                    &attn / "o_proj",
                );
                let (gp, upp, dp) = (&mlp / "gate_proj", &mlp / "up_proj", &mlp / "down_proj");
                let (q, k, v) = (
                    mat(&qp, q_out, h)?,
                    mat(&kp, kv_out, h)?,
                    mat(&vp, kv_out, h)?,
                );
                let q_bias = bias(cfg.qkv_bias, &qp, q_out)?;
                let k_bias = bias(cfg.qkv_bias, &kp, kv_out)?;
                let v_bias = bias(cfg.qkv_bias, &vp, kv_out)?;
                let (gate, up) = (mat(&gp, i, h)?, mat(&upp, i, h)?);
                let gate_bias = bias(cfg.mlp_bias, &gp, i)?;
                let up_bias = bias(cfg.mlp_bias, &upp, i)?;
                stack_rows(&[&q, &k, &v]);
                stack_rows(&[&gate, &up]);
                if let (Some(qb), Some(kb), Some(vb)) = (&q_bias, &k_bias, &v_bias) {
                    stack_rows(&[qb, kb, vb]);
                }
                if let (Some(gb), Some(ub)) = (&gate_bias, &up_bias) {
                    stack_rows(&[gb, ub]);
                }
                Ok(Layer {
                    input_norm: ones(&(&p / "input_layernorm"))?,
                    q,
                    k,
                    v,
                    o: mat(&op, h, q_out)?,
                    q_bias,
                    k_bias,
                    v_bias,
                    o_bias: bias(cfg.o_bias, &op, h)?,
                    post_norm: ones(&(&p / "post_attention_layernorm"))?,
                    gate,
                    up,
                    down: mat(&dp, h, i)?,
                    gate_bias,
                    up_bias,
                    down_bias: bias(cfg.mlp_bias, &dp, h)?,
                })
            })
            .collect::<Result<Vec<Layer>, TchError>>()?;
        let norm = ones(&(&model / "norm"))?;
        let lm_head = if cfg.tie_word_embeddings {
            embed.shallow_clone()
        } else {
            mat(&(vs / "lm_head"), cfg.vocab_size as i64, h)?
        };
        let device = vs.device();
        Ok(Llama {
            cfg: cfg.clone(),
            embed,
            layers,
            norm,
            lm_head,
            inv_freq: rope_inv_freq(cfg, device),
            compute_kind: vs.kind(),
            device,
            efficient_unusable: AtomicBool::new(false),
        })
    }

    /// The configuration this network was built from.
    pub fn config(&self) -> &LlamaConfig {
        &self.cfg
    }

    /// The device holding the parameters.
    pub fn device(&self) -> Device {
        self.device
    }

    /// The dtype activations are computed in (the parameter dtype unless changed).
    pub fn compute_kind(&self) -> Kind {
        self.compute_kind
    }

    /// Computes activations in `kind` while keeping the stored parameters as they are:
    /// fp32 master weights with bf16 compute is the CUDA training recipe.
    pub fn set_compute_kind(&mut self, kind: Kind) {
        self.compute_kind = kind;
    }

    fn rms_norm(&self, x: &Tensor, weight: &Tensor) -> Tensor {
        if x.kind() == Kind::Float && weight.kind() == Kind::Float {
            // All fp32, transformers' steps below are libtorch's `rms_norm` (one call, the
            // same arithmetic: square, mean, add eps, rsqrt, scale, times the weight).
            let width = x.size()[x.dim() - 1];
            return x.rms_norm([width], Some(weight), self.cfg.rms_norm_eps);
        }
        // As transformers: normalise in fp32, cast back, then scale.
        let xf = x.to_kind(Kind::Float);
        let var = xf.square().mean_dim(-1, true, Kind::Float);
        let normed = (xf * (var + self.cfg.rms_norm_eps).rsqrt()).to_kind(x.kind());
        weight.to_kind(self.compute_kind) * normed
    }

    /// Default positions: from the attention mask (`cumsum - 1`, so left padding does not
    /// shift a prompt), else consecutive after the cache.
    fn default_positions(&self, t: i64, past: i64, mask: Option<&Tensor>, batch: i64) -> Tensor {
        match mask {
            Some(m) => {
                let pos = m.to_kind(Kind::Int64).cumsum(-1, Kind::Int64) - 1;
                let pos = pos.clamp_min(0);
                pos.narrow(1, pos.size()[1] - t, t)
            }
            None => Tensor::arange_start(past, past + t, (Kind::Int64, self.device))
                .unsqueeze(0)
                .expand([batch, t], false),
        }
    }

    /// The boolean attention mask `[batch, 1, t, past + t]` (true = may attend), or `None`
    /// when plain causal attention is exact (no padding, no window, no cache offset).
    fn attention_mask(&self, t: i64, past: i64, mask: Option<&Tensor>) -> Option<Tensor> {
        let window = self
            .cfg
            .sliding_window
            .map(|w| w as i64)
            .filter(|&w| w < past + t);
        if mask.is_none() && window.is_none() && (past == 0 || t == 1) {
            return None;
        }
        let s = past + t;
        let q_pos = Tensor::arange_start(past, s, (Kind::Int64, self.device)).unsqueeze(1);
        let k_pos = Tensor::arange(s, (Kind::Int64, self.device)).unsqueeze(0);
        let mut allowed = k_pos.le_tensor(&q_pos);
        if let Some(w) = window {
            allowed = allowed.logical_and(&(&q_pos - &k_pos).lt(w));
        }
        let mut allowed = allowed.unsqueeze(0).unsqueeze(0);
        if let Some(m) = mask {
            allowed = allowed.logical_and(&m.to_kind(Kind::Bool).unsqueeze(1).unsqueeze(1));
            // A padding query would otherwise see no key at all: softmax of all -inf is NaN,
            // and that NaN would reach real rows through the cached padding values.
            allowed = allowed.logical_or(&k_pos.eq_tensor(&q_pos).unsqueeze(0).unsqueeze(0));
        }
        Some(allowed)
    }

    fn attention(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        mask: Option<&Tensor>,
        causal: bool,
    ) -> Tensor {
        let groups = self.cfg.gqa_groups() as i64;
        if let (Some(bias), true) = (mask, self.device.is_cuda()) {
            // Neither the memory-efficient nor the math kernel takes grouped heads here.
            let (k, v) = if groups > 1 {
                (repeat_kv(k, groups), repeat_kv(v, groups))
            } else {
                (k.shallow_clone(), v.shallow_clone())
            };
            if !self.efficient_unusable.load(Ordering::Relaxed) {
                // libtorch's default choice for masked decode on H100 is cuDNN attention,
                // which costs ~2.6 ms of CPU per call; the memory-efficient kernel does not.
                match efficient_attention(q, &k, &v, bias) {
                    Some(out) => return out,
                    None => self.efficient_unusable.store(true, Ordering::Relaxed),
                }
            }
            return Tensor::internal_scaled_dot_product_attention_math::<Tensor>(
                q,
                &k,
                &v,
                Some(bias.shallow_clone()),
                0.0,
                false,
                None,
                None,
                false,
            )
            .0;
        }
        // The dispatcher's fused kernels (flash on CPU, with or without an additive bias)
        // read grouped KV heads directly (`enable_gqa`): repeating them would copy the whole
        // cache on every decode step, which cost more than the attention itself.
        Tensor::scaled_dot_product_attention(
            q,
            k,
            v,
            mask.map(Tensor::shallow_clone),
            0.0,
            causal,
            None,
            groups > 1,
        )
    }

    /// Final-norm hidden states `[batch, t, hidden]` in the compute dtype.
    ///
    /// `attention_mask` is `[batch, past + t]` (1 = real token, 0 = padding) and covers the
    /// cached tokens too; `None` means every token is real. `positions` are `[batch, t]`
    /// RoPE positions; `None` derives them from the mask. With a cache, the new keys and
    /// values are written at the cache's offset and the offset advances by `t`.
    // `x = x + f(x)`, not `x += f(x)`: tch's `+=` is an in-place add, and autograd still
    // needs the pre-residual `x` for the RMSNorm backward.
    #[allow(clippy::assign_op_pattern)]
    pub fn hidden(
        &self,
        input_ids: &Tensor,
        attention_mask: Option<&Tensor>,
        mut cache: Option<&mut KvCache>,
        positions: Option<&Tensor>,
    ) -> Tensor {
        let (b, t) = input_ids.size2().expect("input_ids must be [batch, seq]");
        let past = cache.as_ref().map_or(0, |c| c.len);
        if let Some(c) = &cache {
            assert!(
                past + t <= c.capacity,
                "KV cache overflow: {} + {t} > capacity {}",
                past,
                c.capacity
            );
        }
        let positions = match positions {
            Some(p) => p.shallow_clone(),
            None => self.default_positions(t, past, attention_mask, b),
        };
        let kind = self.compute_kind;
        let freqs =
            positions.to_kind(Kind::Float).unsqueeze(-1) * self.inv_freq.unsqueeze(0).unsqueeze(0);
        let emb = Tensor::cat(&[&freqs, &freqs], -1);
        let cos = emb.cos().to_kind(kind).unsqueeze(1);
        let sin = emb.sin().to_kind(kind).unsqueeze(1);
        let half = self.cfg.head_dim as i64 / 2;
        let sin_signed = Tensor::cat(
            &[sin.narrow(-1, 0, half).neg(), sin.narrow(-1, half, half)],
            -1,
        );
        // An additive bias, built once per call: the math kernel's handling of boolean masks
        // is not part of its contract (it gave wrong results here), an additive bias is.
        let mask = self
            .attention_mask(t, past, attention_mask)
            .map(|m| additive_bias(&m, kind));
        let causal = past == 0 || t > 1;

        let (nh, nkv, d) = (
            self.cfg.num_attention_heads as i64,
            self.cfg.num_key_value_heads as i64,
            self.cfg.head_dim as i64,
        );
        let mut x = Tensor::embedding(&self.embed, input_ids, -1, false, false).to_kind(kind);
        for (l, layer) in self.layers.iter().enumerate() {
            let h = self.rms_norm(&x, &layer.input_norm);
            let (q, k, v) = layer.qkv(&h, kind);
            let q = q.view([b, t, nh, d]).transpose(1, 2);
            let k = k.view([b, t, nkv, d]).transpose(1, 2);
            let v = v.view([b, t, nkv, d]).transpose(1, 2);
            let q = rope(&q, &cos, &sin_signed);
            let k = rope(&k, &cos, &sin_signed);
            let (k, v) = match cache.as_deref_mut() {
                Some(c) => {
                    c.k[l].narrow(2, past, t).copy_(&k);
                    c.v[l].narrow(2, past, t).copy_(&v);
                    (c.k[l].narrow(2, 0, past + t), c.v[l].narrow(2, 0, past + t))
                }
                None => (k, v),
            };
            let y = self.attention(&q, &k, &v, mask.as_ref(), causal && mask.is_none());
            let y = y.transpose(1, 2).reshape([b, t, nh * d]);
            x = x + linear(&y, &layer.o, layer.o_bias.as_ref(), kind);
            let h = self.rms_norm(&x, &layer.post_norm);
            x = x + linear(
                &layer.gated(&h, kind),
                &layer.down,
                layer.down_bias.as_ref(),
                kind,
            );
        }
        if let Some(c) = cache {
            c.len += t;
        }
        self.rms_norm(&x, &self.norm)
    }

    /// fp32 logits `[.., vocab]` for hidden states `[.., hidden]`.
    pub fn logits(&self, hidden: &Tensor) -> Tensor {
        hidden
            .linear::<Tensor>(&self.lm_head.to_kind(self.compute_kind), None)
            .to_kind(Kind::Float)
    }

    /// fp32 logits `[batch, t, vocab]`; see [`Llama::hidden`] for the arguments.
    pub fn forward(
        &self,
        input_ids: &Tensor,
        attention_mask: Option<&Tensor>,
        cache: Option<&mut KvCache>,
        positions: Option<&Tensor>,
    ) -> Tensor {
        self.logits(&self.hidden(input_ids, attention_mask, cache, positions))
    }
}

/// `[b, kv, s, d]` → `[b, kv * groups, s, d]`, each KV head serving `groups` query heads.
fn repeat_kv(x: &Tensor, groups: i64) -> Tensor {
    let (b, kv, s, d) = x.size4().expect("[b, kv, s, d]");
    x.unsqueeze(2)
        .expand([b, kv, groups, s, d], false)
        .reshape([b, kv * groups, s, d])
}

/// `0` where `allowed`, `-inf` elsewhere, `[b, 1, t, s]` in `kind`. The storage's last
/// dimension is padded to a multiple of 16 because the CUDA memory-efficient kernel requires
/// an aligned bias stride; the view has the true width.
fn additive_bias(allowed: &Tensor, kind: Kind) -> Tensor {
    let size = allowed.size();
    let s = size[3];
    let padded = (s + 15) / 16 * 16;
    let mut bias = Tensor::zeros(
        [size[0], size[1], size[2], padded],
        (kind, allowed.device()),
    )
    .narrow(3, 0, s);
    let _ = bias.masked_fill_(&allowed.logical_not(), f64::NEG_INFINITY);
    bias
}

/// CUDA memory-efficient attention with an additive bias; `None` if the kernel refuses the
/// inputs (dtype, alignment), after which the caller uses the math kernel.
fn efficient_attention(q: &Tensor, k: &Tensor, v: &Tensor, bias: &Tensor) -> Option<Tensor> {
    let (b, h, t, _) = q.size4().ok()?;
    let s = k.size()[2];
    let bias = bias.expand([b, h, t, s], false);
    Tensor::f_internal_scaled_dot_product_efficient_attention(
        q,
        k,
        v,
        Some(bias),
        false,
        0.0,
        false,
        None,
    )
    .ok()
    .map(|r| r.0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::LlamaConfig;

    fn tiny() -> LlamaConfig {
        LlamaConfig::tiny(64)
    }

    #[test]
    fn rope_by_roll_equals_rotate_half_exactly() {
        let x = Tensor::randn([2, 3, 5, 8], (Kind::Float, Device::Cpu));
        let angles = Tensor::randn([1, 1, 5, 4], (Kind::Float, Device::Cpu));
        let emb = Tensor::cat(&[&angles, &angles], -1);
        let (cos, sin) = (emb.cos(), emb.sin());
        let sin_signed = Tensor::cat(&[sin.narrow(-1, 0, 4).neg(), sin.narrow(-1, 4, 4)], -1);
        let reference = &x * &cos + rotate_half(&x) * &sin;
        assert!(rope(&x, &cos, &sin_signed).equal(&reference));
    }

    #[test]
    fn stacked_projections_are_the_variables_and_match_separate_products() {
        let cfg = tiny();
        let model = Model::random(&cfg, 7, Device::Cpu, Kind::Float);
        let layer = &model.layers[0];
        let _no_grad = tch::no_grad_guard();
        let qkv = stacked_view(&[&layer.q, &layer.k, &layer.v]).expect("q, k, v stacked");
        assert!(stacked_view(&[&layer.gate, &layer.up]).is_some());
        assert!(
            stacked_view(&[&layer.q, &layer.v]).is_none(),
            "not adjacent"
        );
        // The VarStore's variable is the layer's tensor: writing one writes the stack.
        let name = "model.layers.0.self_attn.k_proj.weight";
        let var = model.vs.variables()[name].shallow_clone();
        let _ = var.shallow_clone().fill_(0.5);
        let (q_rows, k_rows) = (layer.q.size()[0], layer.k.size()[0]);
        assert!(qkv.narrow(0, q_rows, k_rows).eq(0.5).all().int64_value(&[]) == 1);

        let h = Tensor::randn([2, 3, cfg.hidden_size as i64], (Kind::Float, Device::Cpu));
        let (q, k, v) = layer.qkv(&h, Kind::Float);
        for (got, w) in [(&q, &layer.q), (&k, &layer.k), (&v, &layer.v)] {
            let want = h.linear::<Tensor>(w, None);
            let diff = (got - &want).abs().max().double_value(&[]);
            assert!(diff < 1e-5, "stacked product differs by {diff}");
        }
    }

    #[test]
    fn moved_or_recorded_variables_take_separate_products() {
        let cfg = tiny();
        let model = Model::random(&cfg, 7, Device::Cpu, Kind::Float);
        let layer = &model.layers[0];
        // Autograd records and the variables require gradients: no view of the storage.
        assert!(layer.up.requires_grad());
        assert!(stacked_view(&[&layer.gate, &layer.up]).is_none());
        assert!(tch::no_grad(|| stacked_view(&[&layer.gate, &layer.up])).is_some());
        // What the trainer's flat buffer does: the data moves, the variable stays.
        tch::no_grad(|| {
            layer.up.shallow_clone().set_data(&(layer.up.copy() + 1.0));
        });
        assert!(tch::no_grad(|| stacked_view(&[&layer.gate, &layer.up])).is_none());
        let h = Tensor::randn([1, 2, cfg.hidden_size as i64], (Kind::Float, Device::Cpu));
        let got = tch::no_grad(|| layer.gated(&h, Kind::Float));
        let want = tch::no_grad(|| {
            h.linear::<Tensor>(&layer.gate, None).silu() * h.linear::<Tensor>(&layer.up, None)
        });
        assert!(got.allclose(&want, 1e-6, 1e-6, false));
    }
}
