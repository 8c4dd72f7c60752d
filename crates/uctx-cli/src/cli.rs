//! Command-line arguments.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// Virtual memory for a local LLM's context window: what overflows the window
/// is encoded into an on-disk pool and paged back in when it matters.
#[derive(Parser, Debug)]
#[command(name = "uctx", version, about, long_about = None)]
pub struct Cli {
    #[command(flatten)]
    pub global: Global,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Args, Debug, Clone)]
pub struct Global {
    /// The pool: a directory [default: uctx/pool under the user's data directory], or a
    /// team pool's postgres://USER[:PASSWORD]@HOST[:PORT]/DATABASE URL.
    #[arg(long, global = true, env = "UCTX_POOL", value_name = "DIR|URL")]
    pub pool: Option<PathBuf>,
    /// Print machine-readable JSON instead of text.
    #[arg(long, global = true)]
    pub json: bool,
    /// A Model2Vec-format model directory to encode with [default: the bundled model].
    #[arg(long, global = true, env = "UCTX_ENCODER", value_name = "DIR")]
    pub encoder: Option<PathBuf>,
}

#[derive(Args, Debug, Clone)]
pub struct ModelArgs {
    /// The model: `ollama/NAME`, `openai/NAME` or `reader` (built in, answers only from its window).
    #[arg(
        long,
        short = 'm',
        env = "UCTX_MODEL",
        default_value = "ollama/llama3.2"
    )]
    pub model: String,
    #[command(flatten)]
    pub server: ServerArgs,
    /// Context window in tokens [default: what the server reports for the model, at most 8192].
    #[arg(long, value_name = "TOKENS")]
    pub ctx: Option<usize>,
}

/// Where the model servers are.
#[derive(Args, Debug, Clone)]
pub struct ServerArgs {
    /// Ollama's address [env: OLLAMA_HOST; default 127.0.0.1:11434].
    #[arg(long, value_name = "HOST:PORT")]
    pub host: Option<String>,
    /// Base URL of an OpenAI-compatible server [env: OPENAI_BASE_URL; default http://127.0.0.1:8080/v1].
    #[arg(long, value_name = "URL")]
    pub base_url: Option<String>,
    /// File holding the API key for an OpenAI-compatible server (its first line)
    /// [default: the OPENAI_API_KEY environment variable].
    #[arg(long, value_name = "PATH")]
    pub api_key_file: Option<std::path::PathBuf>,
    /// Refused: a key on the command line is visible to every user in the process list.
    #[arg(long, value_name = "KEY", hide = true)]
    pub api_key: Option<String>,
    /// llama-server: the shortest run of cached tokens it may reuse at a new position
    /// (its n_cache_reuse), so dropping old turns keeps the rest cached; 0 turns it off
    /// [default: 64].
    #[arg(long, value_name = "TOKENS", env = "UCTX_CACHE_REUSE")]
    pub cache_reuse: Option<usize>,
}

#[derive(Args, Debug, Clone)]
pub struct SessionArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// The session's namespace in the pool.
    #[arg(long, short = 'n', default_value = "default")]
    pub namespace: String,
    /// Page in from every namespace of the pool, not just this session's.
    #[arg(long)]
    pub shared: bool,
    /// Namespaces of documents this session also searches (repeat for more; an empty
    /// name for none).
    #[arg(long, value_name = "NS", default_value = uctx::session::DOCS_NAMESPACE)]
    pub docs: Vec<String>,
    /// Turn paging off: a plain sliding window (turns are still written to the pool).
    #[arg(long)]
    pub no_memory: bool,
    /// The system prompt.
    #[arg(long, value_name = "TEXT")]
    pub system: Option<String>,
    /// Tokens reserved for each answer [default: a quarter of the window, at most 1024].
    #[arg(long, value_name = "TOKENS")]
    pub answer_tokens: Option<usize>,
    /// Start with an empty window instead of the namespace's latest turns.
    #[arg(long)]
    pub fresh: bool,
}

impl Command {
    /// The subcommand's name, as typed.
    pub fn name(&self) -> &'static str {
        match self {
            Command::Init(_) => "init",
            Command::Doctor(_) => "doctor",
            Command::Chat(_) => "chat",
            Command::Run(_) => "run",
            Command::Ingest(_) => "ingest",
            Command::Recall(_) => "recall",
            Command::Status => "status",
            Command::Clear(_) => "clear",
            Command::Reembed => "reembed",
            Command::Repair => "repair",
            Command::Bench(_) => "bench",
            Command::Serve(_) => "serve",
            Command::Mcp => "mcp",
            Command::Pool(_) => "pool",
        }
    }
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Create the pool and choose its size.
    Init(InitArgs),
    /// Check the backend, the model, the disk and the memory.
    Doctor(DoctorArgs),
    /// Chat with a model, with paged memory.
    Chat(ChatArgs),
    /// Let a model work through a task on its own, with paged memory.
    Run(RunArgs),
    /// Encode files, directories or JSONL records into the pool.
    Ingest(IngestArgs),
    /// Search the pool.
    Recall(RecallArgs),
    /// Show what the pool holds.
    Status,
    /// Delete a namespace, or everything.
    Clear(ClearArgs),
    /// Re-encode the pool's stored text with the current encoder (after changing --encoder).
    Reembed,
    /// Rewrite a damaged pool log with every record that checks, keeping the damaged file beside it.
    Repair,
    /// Benchmarks.
    Bench(BenchArgs),
    /// Serve the Ollama and OpenAI APIs in front of a model server, with paged memory.
    Serve(crate::serve::ServeArgs),
    /// The pool's tools (remember, recall, forget, status) for agent hosts, over MCP on stdio.
    Mcp,
    /// Work on whole pools: copy one into another (directory or team pool, either way).
    Pool(PoolArgs),
}

#[derive(Args, Debug)]
pub struct PoolArgs {
    #[command(subcommand)]
    pub command: PoolCommand,
}

#[derive(Subcommand, Debug)]
pub enum PoolCommand {
    /// Copy every slice of SRC into DST (created if absent): text, provenance, pins
    /// and uses. A team pool keeps SRC's ids, and a copy into one that was cut short
    /// resumes when run again; a directory must be empty and numbers its own ids, in
    /// SRC's order. Each is a pool directory or a postgres:// URL.
    Copy {
        #[arg(value_name = "SRC")]
        src: String,
        #[arg(value_name = "DST")]
        dst: String,
    },
}

#[derive(Args, Debug)]
pub struct InitArgs {
    /// Pool size in GB (5, 10, 15, 20 or any other); asked interactively when omitted on a terminal.
    #[arg(long, value_name = "GB")]
    pub pool_gb: Option<f64>,
}

#[derive(Args, Debug)]
pub struct DoctorArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Also check every byte of the pool: the whole log, every index segment's checksum, and the checkpoint against a full replay (slow on a big pool).
    #[arg(long)]
    pub verify: bool,
}

#[derive(Args, Debug)]
pub struct ChatArgs {
    #[command(flatten)]
    pub session: SessionArgs,
}

#[derive(Args, Debug)]
pub struct RunArgs {
    /// The task.
    pub task: String,
    /// Stop after this many steps if the model has not said it is done.
    #[arg(long, default_value_t = 20)]
    pub max_steps: usize,
    #[command(flatten)]
    pub session: SessionArgs,
}

#[derive(Args, Debug)]
pub struct IngestArgs {
    /// Files and directories (directories are walked honouring .gitignore).
    pub paths: Vec<PathBuf>,
    /// A JSONL file: one `{"text": …, "id"?: …, "source"?: …}` per line.
    #[arg(long, value_name = "FILE")]
    pub jsonl: Option<PathBuf>,
    /// Namespace to write into (sessions search it beside their own; see `chat --docs`).
    #[arg(long, short = 'n', default_value = uctx::session::DOCS_NAMESPACE)]
    pub namespace: String,
    /// Include hidden files and files that .gitignore excludes.
    #[arg(long)]
    pub no_ignore: bool,
    /// No progress bar.
    #[arg(long, short = 'q')]
    pub quiet: bool,
}

#[derive(Args, Debug)]
pub struct RecallArgs {
    /// What to look for.
    pub query: String,
    /// How many slices.
    #[arg(short = 'k', long, default_value_t = 5)]
    pub k: usize,
    /// Only this namespace [default: every namespace].
    #[arg(long, short = 'n')]
    pub namespace: Option<String>,
}

#[derive(Args, Debug)]
pub struct ClearArgs {
    /// The namespace to delete.
    #[arg(long, short = 'n', conflicts_with = "all")]
    pub namespace: Option<String>,
    /// Delete every slice in the pool.
    #[arg(long)]
    pub all: bool,
    /// Do not ask for confirmation.
    #[arg(long, short = 'y')]
    pub yes: bool,
}

#[derive(Args, Debug)]
pub struct BenchArgs {
    #[command(subcommand)]
    pub which: BenchCommand,
}

#[derive(Subcommand, Debug)]
pub enum BenchCommand {
    /// Document retrieval on a BEIR-format set: nDCG@10, recall@10/100 for BM25, dense and hybrid.
    Beir(BeirArgs),
    /// A pool held at its budget: write amplification, append latency with and without maintenance, writer memory.
    Churn(ChurnArgs),
    /// Engine OFF (sliding window) against ON (paged memory) on a long scripted build.
    Drift(DriftArgs),
    /// Encoder speed on one thread, against the Python model2vec package on the same model.
    Encoder(EncoderBenchArgs),
    /// Evidence recall on LoCoMo: BM25, the encoder, hybrid, and the transformer reference.
    Locomo(LocomoArgs),
    /// Question answering on LoCoMo with a model: sliding window (OFF), paged memory (ON), whole conversation (FULL).
    LocomoQa(LocomoQaArgs),
    /// The pool at scale: density, ingest speed, search latency, recall, memory, time to open.
    Scale(ScaleArgs),
    /// What uctx serve adds: first-byte latency through the proxy against direct, and requests per second.
    Serve(crate::serve::BenchServeArgs),
}

#[derive(Args, Debug)]
pub struct ChurnArgs {
    /// The pool's budget, in MB.
    #[arg(long, default_value_t = 64.0)]
    pub mb: f64,
    /// Bytes appended at the budget, as a multiple of the budget.
    #[arg(long, default_value_t = 10.0)]
    pub factor: f64,
    /// Slices per append.
    #[arg(long, default_value_t = 8)]
    pub batch: usize,
    /// Where to build the benchmark's pool (emptied first) [default: uctx/bench-churn-pool under the user's data directory].
    #[arg(long, value_name = "DIR")]
    pub dir: Option<std::path::PathBuf>,
}

#[derive(Args, Debug)]
pub struct ScaleArgs {
    /// A directory of text files [default: the Linux kernel source, fetched once with `apt-get download linux-source-6.1`].
    #[arg(long, value_name = "DIR")]
    pub corpus: Option<std::path::PathBuf>,
    /// Size of the pool to build, in GB (the corpus is ingested again into more namespaces until then).
    #[arg(long, default_value_t = 1.0)]
    pub gb: f64,
    /// Search queries timed per scope.
    #[arg(long, default_value_t = 200)]
    pub queries: usize,
    /// Where to build the benchmark's pool (emptied first) [default: uctx/bench-scale-pool under the user's data directory].
    #[arg(long, value_name = "DIR")]
    pub dir: Option<std::path::PathBuf>,
    /// Build nothing: open the pool at DIR read-only and measure opening, search, recall and memory (the bench runs this in a process of its own after building).
    #[arg(long, value_name = "DIR")]
    pub probe: Option<std::path::PathBuf>,
    /// Fraction of each index segment's lists a search scans [default: the pool's].
    #[arg(long, value_name = "F")]
    pub probe_fraction: Option<f32>,
    /// Warm runs of each whole command timed (`uctx status`, `uctx recall`, an open); the median is reported.
    #[arg(long, default_value_t = 5)]
    pub process_runs: usize,
}

#[derive(Args, Debug)]
pub struct EncoderBenchArgs {
    /// Encode the text files under DIR instead of the text gathered from this machine.
    #[arg(long, value_name = "DIR")]
    pub corpus: Option<std::path::PathBuf>,
    /// Megabytes of text to encode.
    #[arg(long, default_value_t = 4.0)]
    pub mb: f64,
    /// Timed warm passes (the best is reported).
    #[arg(long, default_value_t = 3)]
    pub passes: usize,
    /// The Python interpreter for the model2vec arm.
    #[arg(long, default_value = "python3", value_name = "PYTHON")]
    pub python: String,
    /// Leave out the Python arm.
    #[arg(long)]
    pub no_python: bool,
}

#[derive(Args, Debug)]
pub struct BeirArgs {
    /// A BEIR-format folder: corpus.jsonl, queries.jsonl, qrels/test.tsv.
    #[arg(long, value_name = "DIR")]
    pub data: std::path::PathBuf,
    /// Also score each fusion tried, on the tuning queries only.
    #[arg(long)]
    pub sweep: bool,
}

#[derive(Args, Debug)]
pub struct LocomoArgs {
    /// LoCoMo's `locomo10.json` (CC BY-NC 4.0; not shipped with uctx).
    #[arg(long, value_name = "FILE")]
    pub data: std::path::PathBuf,
    /// The transformer reference scores [default: the file committed with the bench].
    #[arg(long, value_name = "FILE")]
    pub reference: Option<std::path::PathBuf>,
    /// Also score each fusion tried, on the tuning conversations only.
    #[arg(long)]
    pub sweep: bool,
}

#[derive(Args, Debug)]
pub struct LocomoQaArgs {
    /// LoCoMo's `locomo10.json` (CC BY-NC 4.0; not shipped with uctx).
    #[arg(long, value_name = "FILE", default_value = uctx_bench::locomo_qa::DEFAULT_DATA)]
    pub data: std::path::PathBuf,
    /// The model every arm calls.
    #[arg(long, short = 'm', default_value = "reader")]
    pub model: String,
    #[command(flatten)]
    pub server: ServerArgs,
    /// Context window of the OFF and ON arms, in tokens.
    #[arg(long, default_value_t = 2048)]
    pub window: usize,
    /// Context window of the FULL arm (it runs only when the server's context is this large).
    #[arg(long, default_value_t = 32768, value_name = "TOKENS")]
    pub full_window: usize,
    /// The arms to run, comma-separated: off, on, full.
    #[arg(long, value_delimiter = ',', default_value = "off,on,full")]
    pub arms: Vec<uctx_bench::locomo_qa::Arm>,
    /// Ask only N questions, a fixed sample spread evenly across the conversations [default: all].
    #[arg(long, value_name = "N")]
    pub questions: Option<usize>,
    /// Only the first N conversations [default: all].
    #[arg(long, value_name = "N")]
    pub conversations: Option<usize>,
    /// Print every question, its gold answer, the answer and its F1 to standard error.
    #[arg(long)]
    pub trace: bool,
}

#[derive(Args, Debug)]
pub struct DriftArgs {
    /// The model both arms call.
    #[arg(long, short = 'm', default_value = "reader")]
    pub model: String,
    /// Context window in tokens, the same for both arms.
    #[arg(long, default_value_t = 2048)]
    pub window: usize,
    /// Stages of the scripted build (at least 20).
    #[arg(long, default_value_t = 24)]
    pub stages: usize,
    #[command(flatten)]
    pub server: ServerArgs,
    /// Print every turn (verdicts, paged-in slices, answer) to standard error.
    #[arg(long)]
    pub trace: bool,
    /// Keep the arms' pools in DIR/off, DIR/on, ... (must not exist yet) instead of a temporary directory.
    #[arg(long, value_name = "DIR")]
    pub keep: Option<std::path::PathBuf>,
    /// Window layouts of the ON arms, comma-separated: the first is `on`, the others run
    /// beside it (stable, stable-inline, legacy) to compare what the server's cache reuses.
    #[arg(long, value_delimiter = ',', default_value = "stable")]
    pub layouts: Vec<uctx::session::Layout>,
    /// Tokens reserved for each answer (the most the model may generate) [default: a quarter of the window, at most 1024].
    #[arg(long, value_name = "TOKENS")]
    pub answer_tokens: Option<usize>,
    /// Window of the FULL arm (the whole conversation in one window, the upper bound);
    /// at most the model's trained context [default: 131072 for `reader`; others skip FULL].
    #[arg(long, value_name = "TOKENS")]
    pub full_window: Option<usize>,
    /// Unrelated documents ingested into ON's pool first: a folder with a BEIR-format
    /// corpus.jsonl, or .txt/.md files [default: generated documents].
    #[arg(long, value_name = "DIR")]
    pub haystack: Option<std::path::PathBuf>,
    /// Haystack documents to ingest, at most.
    #[arg(long, value_name = "N", default_value_t = uctx_bench::drift::DEFAULT_HAYSTACK_DOCS)]
    pub haystack_docs: usize,
}
