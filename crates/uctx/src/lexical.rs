//! Lexical retrieval: an in-memory BM25 index, and [`fuse`], which merges its ranking with
//! the dense one.
//!
//! Terms are lowercased runs of letters and digits (any script); each CJK ideograph, kana or
//! hangul syllable is a term of its own, since those scripts do not put spaces between words.
//! Everything else (punctuation, symbols, emoji, whitespace) separates terms.

use std::collections::HashMap;

/// BM25's term-frequency saturation.
pub const K1: f32 = 1.2;
/// BM25's length normalization.
pub const B: f32 = 0.75;
/// The rank offset of reciprocal rank fusion, [`Norm::Rank`] (the value of Cormack et al.).
pub const RRF_K: f32 = 60.0;

/// An in-memory BM25 index over documents named by caller ids.
#[derive(Debug, Default, Clone)]
pub struct Bm25 {
    terms: HashMap<String, u32>,
    /// Per term: (document slot, term frequency), in insertion order.
    postings: Vec<Vec<(u32, u32)>>,
    /// Per slot: the caller's id, the document length in terms, its distinct terms;
    /// `None` once removed.
    docs: Vec<Option<Doc>>,
    slots: HashMap<u64, u32>,
    total_len: u64,
    live: u32,
}

#[derive(Debug, Clone)]
struct Doc {
    id: u64,
    len: u32,
    terms: Vec<u32>,
}

impl Bm25 {
    /// An empty index.
    pub fn new() -> Bm25 {
        Bm25::default()
    }

    /// Number of documents in the index.
    pub fn len(&self) -> usize {
        self.live as usize
    }

    /// Whether the index holds no document.
    pub fn is_empty(&self) -> bool {
        self.live == 0
    }

    /// Index `text` under `id`, replacing what `id` held before.
    pub fn add(&mut self, id: u64, text: &str) {
        self.remove(id);
        let mut counts: HashMap<u32, u32> = HashMap::new();
        let mut len = 0u32;
        for_each_term(text, |t| {
            let t = stem(t);
            let next = self.terms.len() as u32;
            let tid = match self.terms.get(t) {
                Some(&tid) => tid,
                None => {
                    self.terms.insert(t.to_string(), next);
                    self.postings.push(Vec::new());
                    next
                }
            };
            *counts.entry(tid).or_insert(0) += 1;
            len += 1;
        });
        let slot = self.docs.len() as u32;
        let mut terms: Vec<u32> = counts.keys().copied().collect();
        terms.sort_unstable();
        for &tid in &terms {
            self.postings[tid as usize].push((slot, counts[&tid]));
        }
        self.docs.push(Some(Doc { id, len, terms }));
        self.slots.insert(id, slot);
        self.total_len += u64::from(len);
        self.live += 1;
    }

    /// Remove the document `id`; unknown ids are ignored.
    pub fn remove(&mut self, id: u64) {
        let Some(slot) = self.slots.remove(&id) else {
            return;
        };
        if let Some(doc) = self.docs[slot as usize].take() {
            for tid in doc.terms {
                self.postings[tid as usize].retain(|&(s, _)| s != slot);
            }
            self.total_len -= u64::from(doc.len);
            self.live -= 1;
        }
    }

    /// The `k` best documents for `query`, best first, as (id, BM25 score). Documents sharing
    /// no term with the query are not returned; ties go to the smaller id.
    pub fn search(&self, query: &str, k: usize) -> Vec<(u64, f32)> {
        if k == 0 || self.live == 0 {
            return Vec::new();
        }
        let mut qterms: Vec<u32> = Vec::new();
        for_each_term(query, |t| {
            if let Some(&tid) = self.terms.get(stem(t)) {
                if !qterms.contains(&tid) {
                    qterms.push(tid);
                }
            }
        });
        let n = self.live as f32;
        let avg = (self.total_len as f32 / n).max(1.0);
        // A score per slot, and the slots touched: cheaper than a map per posting.
        let mut scores = vec![0.0f32; self.docs.len()];
        let mut touched: Vec<u32> = Vec::new();
        for tid in qterms {
            let plist = &self.postings[tid as usize];
            let df = plist.len() as f32;
            if df == 0.0 {
                continue;
            }
            let idf = (1.0 + (n - df + 0.5) / (df + 0.5)).ln();
            for &(slot, tf) in plist {
                let len = self.docs[slot as usize].as_ref().map_or(0, |d| d.len) as f32;
                let tf = tf as f32;
                let s = idf * tf * (K1 + 1.0) / (tf + K1 * (1.0 - B + B * len / avg));
                let acc = &mut scores[slot as usize];
                if *acc == 0.0 {
                    touched.push(slot);
                }
                *acc += s;
            }
        }
        let mut hits: Vec<(u64, f32)> = touched
            .into_iter()
            .filter_map(|slot| {
                let d = self.docs[slot as usize].as_ref()?;
                Some((d.id, scores[slot as usize]))
            })
            .collect();
        if hits.len() > k {
            hits.select_nth_unstable_by(k - 1, |a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
            hits.truncate(k);
        }
        sort_ranked(&mut hits);
        hits
    }
}

/// How a list's scores are put on a common scale before [`fuse`] weighs them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Norm {
    /// `(s - min) / (max - min)` over the list (1 for every entry when all are equal).
    MinMax,
    /// `s / max` over the list (scores are cosines or BM25, so the best is positive).
    Max,
    /// Reciprocal rank, `1 / (RRF_K + rank)`, scores ignored.
    Rank,
}

/// How dense and lexical rankings are merged: each list's scores normalised, then the
/// weighted sum `dense_weight * dense + (1 - dense_weight) * lexical`, an id absent from a
/// list scoring 0 there.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Fusion {
    pub norm: Norm,
    /// The dense list's share, in [0, 1].
    pub dense_weight: f32,
}

impl Fusion {
    /// What search uses: chosen by `uctx bench beir --sweep` and `uctx bench locomo --sweep`
    /// on their tuning splits only (half of each BEIR set's queries, LoCoMo conversations
    /// 0-4), and reported on the held-out rest.
    pub const DEFAULT: Fusion = Fusion {
        norm: Norm::Max,
        dense_weight: 0.2,
    };
}

/// Merge a dense and a lexical ranking (each best first) as `f` says; the `k` best ids, best
/// first, with their fused scores.
pub fn fuse(dense: &[(u64, f32)], lexical: &[(u64, f32)], f: Fusion, k: usize) -> Vec<(u64, f32)> {
    let w = f.dense_weight.clamp(0.0, 1.0);
    let mut fused: HashMap<u64, f32> = HashMap::new();
    for (list, weight) in [(dense, w), (lexical, 1.0 - w)] {
        if list.is_empty() {
            continue;
        }
        let max = list.iter().map(|h| h.1).fold(f32::NEG_INFINITY, f32::max);
        let min = list.iter().map(|h| h.1).fold(f32::INFINITY, f32::min);
        for (rank, &(id, s)) in list.iter().enumerate() {
            let norm = match f.norm {
                Norm::MinMax if max - min > f32::EPSILON => (s - min) / (max - min),
                Norm::MinMax => 1.0,
                Norm::Max if max > 0.0 => s / max,
                Norm::Max => 0.0,
                Norm::Rank => 1.0 / (RRF_K + rank as f32 + 1.0),
            };
            *fused.entry(id).or_insert(0.0) += weight * norm;
        }
    }
    let mut out: Vec<(u64, f32)> = fused.into_iter().collect();
    sort_ranked(&mut out);
    out.truncate(k);
    out
}

/// Best score first; equal scores by ascending id, so rankings are deterministic.
fn sort_ranked(hits: &mut [(u64, f32)]) {
    hits.sort_unstable_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
}

/// A term with an English plural's final `s` dropped (`cats` → `cat`, `houses` → `house`;
/// not after `s`, `u` or `i`: `class`, `campus`, `this`), so that a plural finds its singular.
/// Both the documents and the query are folded alike.
fn stem(t: &str) -> &str {
    match t.as_bytes() {
        [.., x, b's'] if t.len() > 3 && !matches!(x, b's' | b'u' | b'i') => &t[..t.len() - 1],
        _ => t,
    }
}

/// Whether `c` is written without spaces between words and so is a term by itself.
fn is_cjk(c: char) -> bool {
    matches!(c as u32,
        0x3040..=0x30FF     // hiragana, katakana
        | 0x3400..=0x4DBF   // CJK extension A
        | 0x4E00..=0x9FFF   // CJK unified ideographs
        | 0xAC00..=0xD7AF   // hangul syllables
        | 0xF900..=0xFAFF   // CJK compatibility ideographs
        | 0x20000..=0x2FA1F // CJK extensions B-F, compatibility supplement
    )
}

/// Call `f` with each lowercased term of `text`.
pub fn for_each_term(text: &str, mut f: impl FnMut(&str)) {
    let mut buf = String::new();
    let mut one = [0u8; 4];
    for c in text.chars() {
        if is_cjk(c) {
            if !buf.is_empty() {
                f(&buf);
                buf.clear();
            }
            f(c.encode_utf8(&mut one));
        } else if c.is_alphanumeric() {
            if c.is_ascii() {
                buf.push(c.to_ascii_lowercase());
            } else {
                buf.extend(c.to_lowercase());
            }
        } else if !buf.is_empty() {
            f(&buf);
            buf.clear();
        }
    }
    if !buf.is_empty() {
        f(&buf);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn terms(text: &str) -> Vec<String> {
        let mut v = Vec::new();
        for_each_term(text, |t| v.push(t.to_string()));
        v
    }

    #[test]
    fn terms_handle_case_accents_cjk_and_emoji() {
        assert_eq!(terms("Hello, World!"), ["hello", "world"]);
        assert_eq!(terms("Ünïcode café"), ["ünïcode", "café"]);
        assert_eq!(terms("東京タワー ok"), ["東", "京", "タ", "ワ", "ー", "ok"]);
        assert_eq!(terms("rust🦀crab"), ["rust", "crab"]);
        assert!(terms("  \n\t ").is_empty());
    }

    #[test]
    fn ranks_the_matching_document_first() {
        let mut ix = Bm25::new();
        ix.add(1, "the port of the api server is 8080");
        ix.add(2, "we decided to call the project falcon");
        ix.add(3, "lunch was pasta again");
        let hits = ix.search("which port does the API use?", 3);
        assert_eq!(hits[0].0, 1);
        assert!(hits.iter().all(|h| h.0 != 3), "no shared term, no hit");
        assert_eq!(ix.search("FALCON", 1)[0].0, 2);
    }

    #[test]
    fn a_plural_finds_its_singular() {
        assert_eq!(stem("cats"), "cat");
        assert_eq!(stem("houses"), "house");
        for kept in ["class", "campus", "this", "gas", "cat"] {
            assert_eq!(stem(kept), kept);
        }
        let mut ix = Bm25::new();
        ix.add(1, "the cat sat on the mat");
        ix.add(2, "dogs bark");
        assert_eq!(ix.search("Cats", 1)[0].0, 1);
        assert_eq!(ix.search("dog", 1)[0].0, 2);
    }

    #[test]
    fn remove_and_replace() {
        let mut ix = Bm25::new();
        ix.add(1, "alpha beta");
        ix.add(2, "beta gamma");
        ix.remove(1);
        assert_eq!(ix.len(), 1);
        assert!(ix.search("alpha", 5).is_empty());
        ix.add(2, "delta");
        assert!(ix.search("gamma", 5).is_empty());
        assert_eq!(ix.search("delta", 5)[0].0, 2);
        ix.remove(42);
        assert_eq!(ix.len(), 1);
    }

    #[test]
    fn rarer_terms_weigh_more() {
        let mut ix = Bm25::new();
        for i in 0..10 {
            ix.add(i, "common words here");
        }
        ix.add(100, "common zebra");
        ix.add(101, "common common common");
        assert_eq!(ix.search("common zebra", 1)[0].0, 100);
    }

    #[test]
    fn fusion_rewards_agreement_and_weights_its_parts() {
        let dense = vec![(1, 0.9), (2, 0.8), (3, 0.7)];
        let sparse = vec![(2, 12.0), (3, 10.0), (4, 1.0)];
        for norm in [Norm::MinMax, Norm::Max, Norm::Rank] {
            let even = Fusion {
                norm,
                dense_weight: 0.5,
            };
            let fused = fuse(&dense, &sparse, even, 10);
            assert_eq!(fused[0].0, 2, "{norm:?}: ranked high by both");
            assert_eq!(fused.len(), 4);
            let only = |w| {
                fuse(
                    &dense,
                    &sparse,
                    Fusion {
                        norm,
                        dense_weight: w,
                    },
                    1,
                )[0]
                .0
            };
            assert_eq!(only(1.0), 1, "{norm:?}: all weight on dense");
            assert_eq!(only(0.0), 2, "{norm:?}: all weight on lexical");
        }
        let f = Fusion::DEFAULT;
        assert!(fuse(&[], &[], f, 5).is_empty());
        assert_eq!(
            fuse(&[], &sparse, f, 5).len(),
            3,
            "one list alone still ranks"
        );
        assert_eq!(fuse(&dense, &sparse, f, 2).len(), 2);
    }

    #[test]
    fn a_strong_lexical_match_rises_above_a_dense_crowd() {
        // Dense cosines crowd together; one document matches the query's rare name.
        let dense: Vec<(u64, f32)> = (0..30).map(|i| (i, 0.62 - i as f32 * 0.001)).collect();
        let sparse = vec![(17, 14.0), (3, 4.0), (5, 3.5)];
        let fused = fuse(&dense, &sparse, Fusion::DEFAULT, 5);
        assert_eq!(fused[0].0, 17);
    }
}
