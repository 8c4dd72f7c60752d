//! The haystack: unrelated documents ingested into the pool before the conversation, so
//! that the pool is far larger than the pager's cache and retrieval has to find the
//! conversation's facts among thousands of slices.
//!
//! By default the documents are generated (deterministically: notes on a town's
//! everyday life, nothing about software). `--haystack DIR` reads them instead: a
//! BEIR-format `DIR/corpus.jsonl` (`{"title"?, "text"}` per line), or else every `.txt`
//! and `.md` file under DIR, in path order.

use std::path::{Path, PathBuf};

use anyhow::Context;

use super::script::Rng;

/// Where the haystack came from, and its documents.
pub struct Haystack {
    pub source: String,
    pub docs: Vec<String>,
}

/// `n` documents from `dir`, or generated ones.
pub fn load(dir: Option<&Path>, n: usize) -> anyhow::Result<Haystack> {
    let Some(dir) = dir else {
        return Ok(Haystack {
            source: format!("{n} generated documents"),
            docs: generated(n),
        });
    };
    let corpus = dir.join("corpus.jsonl");
    let docs = if corpus.is_file() {
        let text = std::fs::read_to_string(&corpus)
            .with_context(|| format!("reading {}", corpus.display()))?;
        let mut docs = Vec::new();
        for (i, line) in text.lines().filter(|l| !l.trim().is_empty()).enumerate() {
            if docs.len() >= n {
                break;
            }
            let v: serde_json::Value = serde_json::from_str(line)
                .with_context(|| format!("{} line {}: not JSON", corpus.display(), i + 1))?;
            let title = v["title"].as_str().unwrap_or("").trim();
            let body = v["text"].as_str().unwrap_or("").trim();
            let doc = match (title.is_empty(), body.is_empty()) {
                (_, true) => continue,
                (true, false) => body.to_string(),
                (false, false) => format!("{title}\n{body}"),
            };
            docs.push(doc);
        }
        docs
    } else {
        let mut files = Vec::new();
        walk(dir, &mut files).with_context(|| format!("reading {}", dir.display()))?;
        files.sort();
        let mut docs = Vec::new();
        for f in files {
            if docs.len() >= n {
                break;
            }
            let text =
                std::fs::read_to_string(&f).with_context(|| format!("reading {}", f.display()))?;
            if !text.trim().is_empty() {
                docs.push(text);
            }
        }
        docs
    };
    if docs.is_empty() {
        anyhow::bail!(
            "{} holds no documents: pass a folder with corpus.jsonl (BEIR format) or .txt/.md files",
            dir.display()
        );
    }
    Ok(Haystack {
        source: format!("{} documents from {}", docs.len(), dir.display()),
        docs,
    })
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            walk(&path, out)?;
        } else if path.extension().is_some_and(|e| e == "txt" || e == "md") {
            out.push(path);
        }
    }
    Ok(())
}

const PLACES: [&str; 16] = [
    "harbour",
    "orchard",
    "museum",
    "choir",
    "bakery",
    "library",
    "ridge trail",
    "observatory",
    "chess club",
    "allotment",
    "swimming pool",
    "ferry",
    "market square",
    "bell tower",
    "riding school",
    "village hall",
];
const THINGS: [&str; 16] = [
    "timetable",
    "opening hour",
    "membership fee",
    "head gardener",
    "spring recital",
    "roof repair",
    "raffle prize",
    "guided walk",
    "autumn fair",
    "volunteer rota",
    "lost property",
    "bicycle rack",
    "tea urn",
    "noticeboard",
    "apple harvest",
    "lantern parade",
];
const VALUES: [&str; 16] = [
    "saturday mornings",
    "the week after easter",
    "twelve pounds",
    "margaret",
    "the old barn",
    "cancelled this year",
    "a hamper of cheese",
    "postponed until june",
    "half past nine",
    "the blue door",
    "free for children",
    "ben and his sister",
    "under the stairs",
    "two hours long",
    "in the walled garden",
    "after the harvest",
];
const REMARKS: [&str; 12] = [
    "Bring a waterproof coat if the sky looks grey.",
    "Tickets can be bought at the door.",
    "Dogs on leads are welcome.",
    "Parking by the church is limited.",
    "Last year the turnout surprised everyone.",
    "Please sign the sheet on the way in.",
    "Refreshments will be served afterwards.",
    "The route is steep in places.",
    "Children under five go free.",
    "Ask at the desk for a printed map.",
    "The event is weather permitting.",
    "Photographs from the day go on the board.",
];

/// `n` generated documents: each a few sentences of notes about one place in a town.
pub fn generated(n: usize) -> Vec<String> {
    let mut rng = Rng(0x6861_7973_7461_636b);
    (0..n)
        .map(|i| {
            let place = rng.pick(&PLACES);
            let mut doc = format!("Notes on the {place}, item {}.", i + 1);
            for _ in 0..3 + rng.below(4) {
                doc.push(' ');
                if rng.below(2) == 0 {
                    doc.push_str(&format!(
                        "The {place} {} is {}.",
                        rng.pick(&THINGS),
                        rng.pick(&VALUES)
                    ));
                } else {
                    doc.push_str(rng.pick(&REMARKS));
                }
            }
            doc
        })
        .collect()
}
