//! Token sequences of different lengths as one right-padded batch, for the passes that see
//! whole sequences at once: training ([`crate::trainer`]) and scoring ([`crate::score`]).
//! (Sampling pads on the left instead, so that every row's next token lands in the same
//! column; [`crate::sampler`] does that with its cache.)
use tch::{Device, Tensor};

/// Sequences right-padded with id 0 into `[rows, len]`. Under causal attention a padding
/// token comes after every real one in its row, so it never reaches a real position: no
/// attention mask is needed and the fused causal kernels apply.
pub struct RightPadded {
    /// Token ids, `[rows, len]`, int64.
    pub ids: Tensor,
    /// `[rows, len]`, f32: 1 where the token at that position is predicted and counted
    /// (never position 0, which nothing predicts; never padding), else 0.
    pub mask: Tensor,
    /// Sequences in the batch.
    pub rows: usize,
    /// The longest sequence's length (the batch's width).
    pub len: usize,
    /// Real (not padding) tokens in the batch.
    pub tokens: usize,
}

/// Right-pads `seqs` into one batch on `device`; `counted(row, position)` says which real
/// positions (from 1) the mask keeps.
pub fn right_pad<T: Copy + Into<i64>>(
    seqs: &[&[T]],
    counted: impl Fn(usize, usize) -> bool,
    device: Device,
) -> RightPadded {
    let rows = seqs.len();
    let len = seqs.iter().map(|s| s.len()).max().unwrap_or(0);
    let mut ids = vec![0i64; rows * len];
    let mut mask = vec![0f32; rows * len];
    let mut tokens = 0;
    for (r, s) in seqs.iter().enumerate() {
        tokens += s.len();
        for (j, &t) in s.iter().enumerate() {
            ids[r * len + j] = t.into();
            mask[r * len + j] = if j > 0 && counted(r, j) { 1.0 } else { 0.0 };
        }
    }
    let shape = [rows as i64, len as i64];
    RightPadded {
        ids: Tensor::from_slice(&ids).view(shape).to_device(device),
        mask: Tensor::from_slice(&mask).view(shape).to_device(device),
        rows,
        len,
        tokens,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_are_padded_on_the_right_and_the_mask_skips_position_zero() {
        let a: &[u32] = &[5, 6, 7];
        let b: &[u32] = &[8];
        let p = right_pad(&[a, b], |r, j| !(r == 0 && j == 2), Device::Cpu);
        assert_eq!((p.rows, p.len, p.tokens), (2, 3, 4));
        assert_eq!(
            Vec::<i64>::try_from(p.ids.view([-1])).unwrap(),
            [5, 6, 7, 8, 0, 0]
        );
        assert_eq!(
            Vec::<f32>::try_from(p.mask.view([-1])).unwrap(),
            [0.0, 1.0, 0.0, 0.0, 0.0, 0.0]
        );
    }
}
