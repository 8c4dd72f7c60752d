//! Lexical retrieval: the terms BM25 scores (the pool's lexical index, [`crate::pool::lex`],
//! keeps their postings), and [`fuse`], which merges its ranking with the dense one.
//!
//! Terms are lowercased runs of letters and digits (any script); each CJK ideograph, kana or
//! hangul syllable is a term of its own, since those scripts do not put spaces between words.
//! Everything else (punctuation, symbols, emoji, whitespace) separates terms.

use std::collections::HashMap;

/// The version of the rules below (terms, folding): a lexical segment written under other
/// rules is rebuilt. Bump it with any change to [`for_each_term`] or [`stem`].
pub const ANALYSIS: u32 = 1;
/// BM25's term-frequency saturation.
pub const K1: f32 = 1.2;
/// BM25's length normalization.
pub const B: f32 = 0.75;
/// The rank offset of reciprocal rank fusion, [`Norm::Rank`] (the value of Cormack et al.).
pub const RRF_K: f32 = 60.0;

/// Function words — articles, pronouns, auxiliaries, prepositions, conjunctions, wh-words,
/// quantifiers, their contractions — that say nothing of what a text is about: the one list
/// for whatever matches content words (excerpts, the reader, the benches' checks). Sorted.
/// BM25 indexes them, but a query scores only its other terms when it has any: their idf
/// weighs them down, not to nothing, and over a long question they outweigh the one rare
/// word that matters (chosen on the tuning splits: LoCoMo recall@10 0.629 → 0.664, msmarco
/// nDCG@10 0.714 → 0.726, dbpedia 0.399 → 0.382; the mean of the three rose).
pub const STOPWORDS: &[&str] = &[
    "a", "about", "after", "again", "all", "also", "am", "an", "and", "any", "are", "as", "at",
    "be", "been", "before", "being", "but", "by", "can", "could", "did", "do", "does", "doesn't",
    "don't", "done", "each", "every", "for", "from", "had", "has", "have", "he", "her", "here",
    "his", "how", "i", "if", "in", "into", "is", "it", "it's", "its", "just", "let's", "many",
    "may", "me", "might", "mine", "more", "most", "much", "must", "my", "no", "not", "now", "of",
    "on", "one", "ones", "onto", "or", "our", "ours", "shall", "she", "should", "so", "some",
    "than", "that", "the", "their", "them", "then", "there", "these", "they", "this", "those",
    "to", "us", "was", "we", "we'll", "we're", "were", "what", "what's", "when", "where", "which",
    "which's", "who", "who's", "whom", "whose", "why", "will", "with", "would", "you", "your",
    "yours",
];

/// Whether `word` (lowercased) is one of [`STOPWORDS`].
pub fn is_stopword(word: &str) -> bool {
    STOPWORDS.binary_search(&word).is_ok()
}

/// Reciprocal rank: what place `rank` (0 for the first) of a list is worth when rankings
/// are merged by place rather than score, `1 / (RRF_K + rank + 1)`.
pub fn rrf(rank: usize) -> f32 {
    1.0 / (RRF_K + rank as f32 + 1.0)
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
        norm: Norm::MinMax,
        dense_weight: 0.3,
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
                Norm::Rank => rrf(rank),
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
pub fn stem(t: &str) -> &str {
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

    #[test]
    fn the_stopword_list_is_sorted_and_found() {
        assert!(STOPWORDS.windows(2).all(|w| w[0] < w[1]));
        assert!(is_stopword("the") && is_stopword("doesn't") && !is_stopword("port"));
    }

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
    fn a_plural_folds_to_its_singular() {
        assert_eq!(stem("cats"), "cat");
        assert_eq!(stem("houses"), "house");
        for kept in ["class", "campus", "this", "gas", "cat"] {
            assert_eq!(stem(kept), kept);
        }
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
