//! Cutting text into slices of about [`SLICE_TOKENS`] tokens.
//!
//! A slice never spans two turns (each turn is chunked on its own). Inside a
//! turn the cut prefers paragraph boundaries, then sentence ends, then
//! whitespace, and only as a last resort a character boundary, so that any
//! input — a 50 MB line with no spaces included — is cut into bounded pieces.

/// Target size of one slice, in tokens.
pub const SLICE_TOKENS: usize = 512;

/// Bytes per token assumed before counting: pieces longer than this many bytes
/// per allowed token are cut blind first, so the tokenizer never sees a huge input.
const MAX_BYTES_PER_TOKEN: usize = 8;

/// Split `text` into pieces of at most `max_tokens` tokens as `count` measures them.
///
/// Pieces are trimmed and never empty; concatenated (with the separators that
/// were cut at) they give back the text's non-whitespace content in order.
pub fn split(text: &str, max_tokens: usize, count: &dyn Fn(&str) -> usize) -> Vec<String> {
    let max_tokens = max_tokens.max(1);
    let mut out = Vec::new();
    let mut current = String::new();
    let mut current_tokens = 0usize;
    for para in paragraphs(text) {
        for piece in fit(para, max_tokens, count) {
            let t = count(&piece);
            if !current.is_empty() && current_tokens + t + 1 > max_tokens {
                out.push(std::mem::take(&mut current));
                current_tokens = 0;
            }
            if !current.is_empty() {
                current.push_str("\n\n");
                current_tokens += 1;
            }
            current.push_str(&piece);
            current_tokens += t;
        }
    }
    if !current.is_empty() {
        out.push(current);
    }
    out
}

/// Paragraphs: runs of text separated by blank lines, trimmed, non-empty.
fn paragraphs(text: &str) -> impl Iterator<Item = &str> {
    text.split("\n\n")
        .flat_map(|p| p.split("\r\n\r\n"))
        .map(str::trim)
        .filter(|p| !p.is_empty())
}

/// Cut one paragraph into pieces that each fit `max_tokens`.
fn fit(para: &str, max_tokens: usize, count: &dyn Fn(&str) -> usize) -> Vec<String> {
    let byte_cap = max_tokens.saturating_mul(MAX_BYTES_PER_TOKEN).max(16);
    if para.len() <= byte_cap && count(para) <= max_tokens {
        return vec![para.to_string()];
    }
    // Too big: cut at sentence ends, then whitespace, then characters, and
    // pack the parts greedily back up to the limit.
    let mut parts = Vec::new();
    for sentence in sentences(para) {
        if sentence.len() <= byte_cap && count(sentence) <= max_tokens {
            parts.push(sentence);
            continue;
        }
        for word_run in word_runs(sentence, byte_cap / 2) {
            if word_run.len() <= byte_cap && count(word_run) <= max_tokens {
                parts.push(word_run);
            } else {
                parts.extend(cut_chars(word_run, max_tokens, byte_cap, count));
            }
        }
    }
    pack(&parts, max_tokens, count)
}

/// The sentences (and lines) of `text`, trimmed, non-empty, in order.
pub fn sentences(text: &str) -> Vec<&str> {
    sentence_spans(text)
        .into_iter()
        .map(|(s, _)| s.trim())
        .filter(|s| !s.is_empty())
        .collect()
}

/// The one sentence splitter: each sentence of `text` as it stands (its ending
/// character included), with that character — `\n` for a line's end and for the end
/// of the text. `.`, `!` and `?` end a sentence only before whitespace or the end, so
/// `v2.3.1` and `example.com` stay whole; a line end always ends one.
pub fn sentence_spans(text: &str) -> Vec<(&str, char)> {
    let mut out = Vec::new();
    let mut start = 0;
    let mut chars = text.char_indices().peekable();
    while let Some((i, c)) = chars.next() {
        let before_space = chars.peek().is_none_or(|&(_, n)| n.is_whitespace());
        if c == '\n' || (matches!(c, '.' | '!' | '?') && before_space) {
            let end = i + c.len_utf8();
            out.push((&text[start..end], c));
            start = end;
        }
    }
    if start < text.len() {
        out.push((&text[start..], '\n'));
    }
    out
}

/// Runs of whole words of at most `max_bytes` each (a longer single word is a run of its own).
fn word_runs(s: &str, max_bytes: usize) -> Vec<&str> {
    let mut out = Vec::new();
    let mut start: Option<usize> = None;
    let mut end = 0;
    for (i, w) in s
        .split_ascii_whitespace()
        .map(|w| (w.as_ptr() as usize - s.as_ptr() as usize, w))
    {
        let w_end = i + w.len();
        match start {
            Some(st) if w_end - st > max_bytes => {
                out.push(&s[st..end]);
                start = Some(i);
            }
            None => start = Some(i),
            _ => {}
        }
        end = w_end;
    }
    if let Some(st) = start {
        out.push(&s[st..end]);
    }
    out
}

/// Last resort for a run with no whitespace: halve at char boundaries until pieces fit.
fn cut_chars<'a>(
    s: &'a str,
    max_tokens: usize,
    byte_cap: usize,
    count: &dyn Fn(&str) -> usize,
) -> Vec<&'a str> {
    let mut out = Vec::new();
    let mut stack = vec![s];
    while let Some(piece) = stack.pop() {
        if piece.len() <= byte_cap && count(piece) <= max_tokens {
            out.push(piece);
            continue;
        }
        let mut mid = piece.len() / 2;
        while mid > 0 && !piece.is_char_boundary(mid) {
            mid -= 1;
        }
        if mid == 0 {
            // A single character that alone exceeds the limit: keep it whole.
            out.push(piece);
            continue;
        }
        stack.push(&piece[mid..]);
        stack.push(&piece[..mid]);
    }
    out
}

/// Greedily join consecutive parts while they fit.
fn pack(parts: &[&str], max_tokens: usize, count: &dyn Fn(&str) -> usize) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    let mut current = String::new();
    let mut current_tokens = 0;
    for part in parts {
        let t = count(part);
        if !current.is_empty() && current_tokens + t > max_tokens {
            out.push(std::mem::take(&mut current));
            current_tokens = 0;
        }
        if !current.is_empty() {
            current.push(' ');
        }
        current.push_str(part);
        current_tokens += t;
    }
    if !current.is_empty() {
        out.push(current);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(s: &str) -> usize {
        // One token per whitespace word, and at least one per 4 bytes of a long word.
        s.split_whitespace()
            .map(|w| w.len().div_ceil(4).max(1))
            .sum()
    }

    #[test]
    fn short_text_is_one_slice() {
        assert_eq!(split("hello world", 512, &words), vec!["hello world"]);
    }

    #[test]
    fn empty_and_blank_give_nothing() {
        assert!(split("", 512, &words).is_empty());
        assert!(split(" \n\n \t ", 512, &words).is_empty());
    }

    #[test]
    fn paragraphs_are_packed_and_kept_whole() {
        let para = "alpha beta gamma delta. ".repeat(10);
        let text = vec![para.clone(); 6].join("\n\n");
        let slices = split(&text, 100, &words);
        assert!(slices.len() > 1);
        for s in &slices {
            assert!(words(s) <= 100, "{} tokens", words(s));
            // Cut only between paragraphs here, since each paragraph fits.
            assert_eq!(s.matches("alpha").count() % 10, 0);
        }
    }

    #[test]
    fn huge_line_without_spaces_is_bounded() {
        let text = "x".repeat(200_000);
        let slices = split(&text, 64, &words);
        assert!(slices.iter().all(|s| words(s) <= 64));
        assert_eq!(slices.iter().map(|s| s.len()).sum::<usize>(), 200_000);
    }

    #[test]
    fn multibyte_text_is_cut_on_char_boundaries() {
        let text = "日本語のテキスト🙂".repeat(5_000);
        let slices = split(&text, 50, &words);
        assert!(slices.len() > 1);
        assert_eq!(slices.concat(), text);
    }

    #[test]
    fn content_is_preserved_in_order() {
        let text = "One. Two three! Four?\n\nFive six.\nSeven";
        let joined: Vec<String> = split(text, 3, &words)
            .iter()
            .flat_map(|s| s.split_whitespace().map(str::to_string).collect::<Vec<_>>())
            .collect();
        let expected: Vec<String> = text.split_whitespace().map(str::to_string).collect();
        assert_eq!(joined, expected);
    }
}
