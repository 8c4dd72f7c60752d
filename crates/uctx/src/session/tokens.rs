//! Token estimates calibrated against what the backend counts.
//!
//! The session counts tokens with the encoder's tokenizer, which is not the
//! model's. Every reply that reports its prompt size (Ollama
//! `prompt_eval_count`, OpenAI `usage.prompt_tokens`) corrects the scale from
//! our count to the server's. The scale moves up at once and down slowly, so
//! a window is never assembled on an optimistic guess.

/// Tokens added per chat message for the template's role markers.
pub const MESSAGE_OVERHEAD: usize = 6;

/// Scale assumed before the server has reported anything.
const INITIAL_SCALE: f64 = 1.25;

#[derive(Clone, Debug, PartialEq)]
pub struct Calibration {
    scale: f64,
    observations: u64,
}

impl Default for Calibration {
    fn default() -> Self {
        Calibration {
            scale: INITIAL_SCALE,
            observations: 0,
        }
    }
}

impl Calibration {
    /// Server tokens expected for `raw` tokens of ours.
    pub fn estimate(&self, raw: usize) -> usize {
        (raw as f64 * self.scale).ceil() as usize
    }

    pub fn scale(&self) -> f64 {
        self.scale
    }

    /// Whether any count from the server has been learnt from yet.
    pub fn observed(&self) -> bool {
        self.observations > 0
    }

    /// Assume `factor` times more server tokens per token of ours from now on (after the
    /// server cut or refused a prompt); a factor below 1 changes nothing.
    pub fn grow(&mut self, factor: f64) {
        self.scale = (self.scale * factor.max(1.0)).min(8.0);
    }

    /// Learn from one prompt: `raw` tokens by our count, `reported` by the server's.
    pub fn observe(&mut self, raw: usize, reported: usize) {
        if raw == 0 || reported == 0 {
            return;
        }
        let ratio = (reported as f64 / raw as f64 * 1.03).clamp(0.25, 8.0);
        self.scale = if ratio > self.scale || self.observations == 0 {
            ratio
        } else {
            0.8 * self.scale + 0.2 * ratio
        };
        self.observations += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scale_rises_at_once_and_falls_slowly() {
        let mut c = Calibration::default();
        c.observe(100, 200);
        assert!((c.scale() - 2.06).abs() < 1e-9);
        c.observe(100, 100);
        assert!(c.scale() > 1.8, "fell too fast: {}", c.scale());
        c.observe(100, 300);
        assert!(c.scale() >= 3.0);
        assert_eq!(c.estimate(10), (10.0 * c.scale()).ceil() as usize);
    }

    #[test]
    fn zero_counts_are_ignored() {
        let mut c = Calibration::default();
        c.observe(0, 10);
        c.observe(10, 0);
        assert_eq!(c, Calibration::default());
    }
}
