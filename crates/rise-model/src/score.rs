//! The log-probability a model assigns to whole sequences (`rise score`).
use tch::{Device, Kind};

use crate::batch::right_pad;
use crate::llama::Llama;

/// `(Σ_{i≥1} log p(t_i | t_<i), n - 1)` for each sequence of one batch: the first token is
/// conditioned on, not scored. Sequences shorter than 2 tokens score `(0, 0)`.
pub fn score_batch(model: &Llama, seqs: &[&[i64]], device: Device) -> Vec<(f64, usize)> {
    let batch = right_pad(seqs, |_, _| true, device);
    let t = batch.len as i64;
    if t < 2 {
        return seqs.iter().map(|_| (0.0, 0)).collect();
    }
    let logits = tch::no_grad(|| model.forward(&batch.ids.narrow(1, 0, t - 1), None, None, None));
    let logp = logits.log_softmax(-1, Kind::Float);
    let target = batch.ids.narrow(1, 1, t - 1).unsqueeze(-1);
    let tok_lp = logp.gather(2, &target, false).squeeze_dim(-1) * batch.mask.narrow(1, 1, t - 1);
    let sums = Vec::<f64>::try_from(
        tok_lp
            .sum_dim_intlist(1, false, Kind::Double)
            .to_device(Device::Cpu),
    )
    .expect("a 1-d tensor of one sum per row");
    seqs.iter()
        .zip(sums)
        .map(|(s, lp)| (lp, s.len() - 1))
        .collect()
}
