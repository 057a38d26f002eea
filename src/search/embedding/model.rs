//! Texts to vectors on the CPU: tokenize, cut at the model's length, pad a batch with an
//! attention mask, run the encoder, pool, normalize. Blocking and CPU-bound: `Embedder`
//! decides where and when it runs.

use super::bert::Bert;
use super::layout::{Layout, Pooling};
use super::{EmbedError, Vector};
use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use tokenizers::{Tokenizer, TruncationDirection, TruncationParams, TruncationStrategy};

/// Texts run through the model together, at most. Padding makes a batch cost its longest
/// text times its size, so texts are sorted by length first.
const BATCH: usize = 32;

/// Padded word pieces per batch, at most: attention holds batch x heads x width² scores, so
/// 32 texts of 256 pieces would need about 100 MB for them alone; 4096 pieces keep a batch of
/// long texts near 50 MB (short texts still go 32 at a time). A caller may ask for less.
pub const BATCH_PIECES: usize = 4096;

pub struct Model {
    bert: Bert,
    tokenizer: Tokenizer,
    pooling: Pooling,
    pad_id: u32,
    dim: usize,
}

impl Model {
    pub fn load(layout: Layout) -> Result<Model, EmbedError> {
        let Layout {
            dir,
            config,
            mut tokenizer,
            weights,
            pooling,
            max_seq_length,
            ..
        } = layout;
        // tokenizer.json may carry its own cut and a fixed padding (MiniLM's: 128); the cut
        // that counts is sentence-transformers' max_seq_length, and batches are padded here.
        tokenizer
            .with_truncation(Some(TruncationParams {
                max_length: max_seq_length,
                strategy: TruncationStrategy::LongestFirst,
                stride: 0,
                direction: TruncationDirection::Right,
            }))
            .map_err(|e| EmbedError::Model(format!("tokenizer truncation: {e}")))?;
        tokenizer.with_padding(None);
        let device = Device::Cpu;
        let vb =
            VarBuilder::from_buffered_safetensors(weights, DType::F32, &device).map_err(|e| {
                EmbedError::Malformed {
                    file: dir.join(super::layout::WEIGHTS),
                    reason: e.to_string(),
                }
            })?;
        let bert = Bert::load(vb, &config).map_err(|e| EmbedError::Malformed {
            file: dir.join(super::layout::WEIGHTS),
            reason: format!("the weights do not fit config.json: {e}"),
        })?;
        Ok(Model {
            bert,
            tokenizer,
            pooling,
            pad_id: config.pad_token_id,
            dim: config.hidden_size,
        })
    }

    pub fn dim(&self) -> usize {
        self.dim
    }

    /// One unit vector per text, in order, in forward passes of at most `max_pieces` padded
    /// word pieces. `each_pass` is called before each pass, and what it returns is held
    /// through it (a turn at the model).
    pub fn embed<Turn>(
        &self,
        texts: &[String],
        max_pieces: usize,
        mut each_pass: impl FnMut() -> Turn,
    ) -> Result<Vec<Vector>, EmbedError> {
        if texts.is_empty() {
            return Ok(Vec::new());
        }
        let encodings = self
            .tokenizer
            .encode_batch(texts.iter().map(String::as_str).collect::<Vec<_>>(), true)
            .map_err(|e| EmbedError::Model(format!("tokenizer: {e}")))?;
        let mut order: Vec<usize> = (0..texts.len()).collect();
        order.sort_by_key(|&i| encodings[i].get_ids().len());
        let mut out: Vec<Vector> = vec![Vec::new(); texts.len()];
        let mut rest = &order[..];
        while !rest.is_empty() {
            // Sorted ascending: the last text taken sets the batch's width. A batch stops
            // where padding would waste more than a quarter of it, plus a little.
            let len = |n: usize| encodings[rest[n - 1]].get_ids().len();
            let take = (1..=rest.len().min(BATCH))
                .take_while(|&n| n * len(n) <= max_pieces && len(n) <= len(1) * 5 / 4 + 8)
                .last()
                .unwrap_or(1);
            let (chunk, tail) = rest.split_at(take);
            let batch: Vec<&[u32]> = chunk.iter().map(|&i| encodings[i].get_ids()).collect();
            let vectors = {
                let _turn = each_pass();
                self.run(&batch)?
            };
            for (&i, vector) in chunk.iter().zip(vectors) {
                out[i] = vector;
            }
            rest = tail;
        }
        Ok(out)
    }

    /// One forward pass over texts already cut to the model's length.
    fn run(&self, batch: &[&[u32]]) -> Result<Vec<Vector>, EmbedError> {
        let width = batch.iter().map(|ids| ids.len()).max().unwrap_or(0).max(1);
        let mut ids = Vec::with_capacity(batch.len() * width);
        let mut mask = Vec::with_capacity(batch.len() * width);
        for text in batch {
            ids.extend_from_slice(text);
            ids.extend(std::iter::repeat_n(self.pad_id, width - text.len()));
            mask.extend(std::iter::repeat_n(1u32, text.len()));
            mask.extend(std::iter::repeat_n(0u32, width - text.len()));
        }
        let shape = (batch.len(), width);
        let device = &Device::Cpu;
        let pooled = (|| {
            let ids = Tensor::from_vec(ids, shape, device)?;
            let mask = Tensor::from_vec(mask, shape, device)?;
            let hidden = self.bert.forward(&ids, &mask)?;
            match self.pooling {
                Pooling::Cls => hidden.narrow(1, 0, 1)?.squeeze(1),
                Pooling::Mean => {
                    // Padding positions have vectors too: only the text's own count.
                    let mask = mask.to_dtype(DType::F32)?.unsqueeze(2)?;
                    let sum = hidden.broadcast_mul(&mask)?.sum(1)?;
                    let count = mask.sum(1)?.clamp(1e-9f32, f32::MAX)?;
                    sum.broadcast_div(&count)
                }
            }?
            .to_vec2::<f32>()
        })()
        .map_err(|e: candle_core::Error| EmbedError::Model(e.to_string()))?;
        Ok(pooled.into_iter().map(normalize).collect())
    }
}

/// Unit length, as sentence-transformers' Normalize module does (its floor of 1e-12 keeps an
/// all-zero vector at zero instead of NaN).
fn normalize(mut v: Vector) -> Vector {
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-12);
    v.iter_mut().for_each(|x| *x /= norm);
    v
}
