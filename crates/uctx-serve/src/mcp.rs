//! The pool as MCP tools (the official Rust SDK, `rmcp`): `remember`, `recall`, `forget`
//! and `status`, each answer carrying provenance (id, turn, source, namespace, score).
//! Served over stdio by `uctx mcp` and over streamable HTTP at `/mcp` by `uctx serve`.

use std::sync::Arc;

use rmcp::model::{
    CallToolRequestParam, CallToolResult, Content, Implementation, ListToolsResult,
    PaginatedRequestParam, ServerCapabilities, ServerInfo, Tool,
};
use rmcp::service::RequestContext;
use rmcp::{ErrorData, RoleServer, ServerHandler};
use serde_json::{json, Map, Value};
use uctx::memory::{Memory, Unit};
use uctx::pool::{Scope, WitnessEvent};
use uctx::Source;

/// The namespace `remember` writes to when none is named.
pub const DEFAULT_NAMESPACE: &str = "mcp";

/// Opens the pool's writer for one write.
pub type OpenWriter = Arc<dyn Fn() -> uctx::Result<Arc<Memory>> + Send + Sync>;

/// The tools over one pool.
#[derive(Clone)]
pub struct MemoryTools {
    pools: Pools,
}

#[derive(Clone)]
enum Pools {
    /// The server's own memory (the server is the pool's writer).
    Shared(Arc<Memory>),
    /// A pool read through a follower, whose writer's lock is taken only for the one
    /// write a tool makes: an agent host keeps `uctx mcp` running for hours, beside
    /// `uctx chat`, `ingest` or `serve` on the same pool.
    Follower {
        reader: Arc<Memory>,
        open_writer: OpenWriter,
    },
}

impl MemoryTools {
    /// The tools over memory this process writes (the server's).
    pub fn new(memory: Arc<Memory>) -> MemoryTools {
        MemoryTools {
            pools: Pools::Shared(memory),
        }
    }

    /// The tools over a pool read through `reader` (a read-only handle) and written by
    /// opening the writer with `open_writer` for each `remember` and `forget`.
    pub fn follower(reader: Arc<Memory>, open_writer: OpenWriter) -> MemoryTools {
        MemoryTools {
            pools: Pools::Follower {
                reader,
                open_writer,
            },
        }
    }

    /// The memory to read: the writer's, or the follower brought up to date.
    fn reader(&self) -> Result<&Arc<Memory>, String> {
        match &self.pools {
            Pools::Shared(m) => Ok(m),
            Pools::Follower { reader, .. } => {
                reader.pool().refresh().map_err(|e| e.to_string())?;
                Ok(reader)
            }
        }
    }

    /// The memory to write, for the length of one tool call.
    fn writer(&self, tool: &str) -> Result<Arc<Memory>, String> {
        match &self.pools {
            Pools::Shared(m) => Ok(Arc::clone(m)),
            Pools::Follower { open_writer, .. } => open_writer().map_err(|e| match e {
                uctx::Error::Locked { holder, .. } => format!(
                    "{tool} needs to write the pool, and {holder} is writing it now; \
                     try again when it is done, or, while it is `uctx serve`, point \
                     this MCP host at its /mcp endpoint instead"
                ),
                e => e.to_string(),
            }),
        }
    }
}

fn schema(v: Value) -> Arc<Map<String, Value>> {
    Arc::new(v.as_object().cloned().unwrap_or_default())
}

fn tools() -> Vec<Tool> {
    vec![
        Tool::new(
            "remember",
            "Write a piece of text into uctx's memory pool, to be recalled later (pinned text never fades).",
            schema(json!({"type": "object", "properties": {
                "text": {"type": "string", "description": "What to remember."},
                "namespace": {"type": "string", "description": "Where to keep it [default: mcp]."},
                "pin": {"type": "boolean", "description": "Keep it forever, never evicted."}
            }, "required": ["text"]})),
        ),
        Tool::new(
            "recall",
            "Search uctx's memory pool; each hit with its id, turn, source, namespace and score.",
            schema(json!({"type": "object", "properties": {
                "query": {"type": "string"},
                "k": {"type": "integer", "minimum": 1, "maximum": 100, "description": "How many hits [default: 5]."},
                "namespace": {"type": "string", "description": "Only this namespace [default: all]."}
            }, "required": ["query"]})),
        ),
        Tool::new(
            "forget",
            "Delete one slice (by id) or a whole namespace from uctx's memory pool.",
            schema(json!({"type": "object", "properties": {
                "id": {"type": "integer", "description": "A slice id, as recall gives it."},
                "namespace": {"type": "string", "description": "Delete every slice of this namespace."}
            }})),
        ),
        Tool::new(
            "status",
            "What uctx's memory pool holds: slices, tokens, bytes, namespaces.",
            schema(json!({"type": "object", "properties": {}})),
        ),
    ]
}

fn provenance(meta: &uctx::SliceMeta, score: Option<f32>) -> Value {
    json!({
        "id": meta.id,
        "turn": meta.turn,
        "source": meta.source.to_string(),
        "namespace": meta.namespace,
        "score": score,
    })
}

fn arg_str<'a>(args: &'a Map<String, Value>, k: &str) -> Option<&'a str> {
    args.get(k)
        .and_then(Value::as_str)
        .map(str::trim)
        .filter(|s| !s.is_empty())
}

impl MemoryTools {
    /// Run one tool; a user's mistake is a tool error (with its fix), not a crash.
    pub fn call(&self, name: &str, args: &Map<String, Value>) -> Result<Value, String> {
        match name {
            "remember" => {
                let text = arg_str(args, "text").ok_or("remember needs `text`")?;
                let memory = self.writer(name)?;
                let pool = memory.pool();
                let namespace = arg_str(args, "namespace").unwrap_or(DEFAULT_NAMESPACE);
                let pin = args.get("pin").and_then(Value::as_bool).unwrap_or(false);
                let source = if pin {
                    Source::Pinned
                } else {
                    Source::Document
                };
                let ids = memory
                    .write(&[Unit {
                        namespace,
                        source,
                        text,
                        turn: 0,
                        ext_id: None,
                    }])
                    .map_err(|e| e.to_string())?;
                if pin {
                    let events: Vec<WitnessEvent> =
                        ids.iter().map(|&i| WitnessEvent::Pin(i)).collect();
                    pool.record(&events).map_err(|e| e.to_string())?;
                }
                let slices: Vec<Value> = ids
                    .iter()
                    .filter_map(|&id| pool.meta(id).transpose())
                    .collect::<uctx::Result<Vec<_>>>()
                    .map_err(|e| e.to_string())?
                    .iter()
                    .map(|m| provenance(m, None))
                    .collect();
                Ok(json!({"remembered": slices, "pinned": pin}))
            }
            "recall" => {
                let query = arg_str(args, "query").ok_or("recall needs `query`")?;
                let k = args
                    .get("k")
                    .and_then(Value::as_u64)
                    .unwrap_or(5)
                    .clamp(1, 100) as usize;
                let scope = match arg_str(args, "namespace") {
                    Some(ns) => Scope::Namespace(ns),
                    None => Scope::All,
                };
                let hits = self
                    .reader()?
                    .recall(query, k, scope)
                    .map_err(|e| e.to_string())?;
                let hits: Vec<Value> = hits
                    .into_iter()
                    .map(|h| {
                        let mut v = provenance(&h.slice.meta, Some(h.score));
                        v["text"] = json!(h.slice.text);
                        v
                    })
                    .collect();
                Ok(json!({"hits": hits}))
            }
            "forget" => match (
                args.get("id").and_then(Value::as_u64),
                arg_str(args, "namespace"),
            ) {
                (Some(id), None) => {
                    let memory = self.writer(name)?;
                    let pool = memory.pool();
                    let meta = pool.meta(id).map_err(|e| e.to_string())?;
                    let n = pool.forget(&[id]).map_err(|e| e.to_string())?;
                    if n == 0 {
                        return Err(format!("there is no slice {id} — recall gives the ids"));
                    }
                    Ok(json!({"forgotten": n, "slices": meta.map(|m| vec![provenance(&m, None)])}))
                }
                (None, Some(ns)) => {
                    let n = self
                        .writer(name)?
                        .pool()
                        .delete_namespace(ns)
                        .map_err(|e| e.to_string())?;
                    Ok(json!({"forgotten": n, "namespace": ns}))
                }
                _ => Err("forget needs either `id` or `namespace` (not both)".into()),
            },
            "status" => {
                let memory = self.reader()?;
                let pool = memory.pool();
                let s = pool.stats().map_err(|e| e.to_string())?;
                Ok(json!({
                    "slices": s.slices,
                    "tokens": s.tokens,
                    "bytes_on_disk": s.bytes_on_disk,
                    "budget_bytes": s.budget_bytes,
                    "namespaces": pool.namespaces().map_err(|e| e.to_string())?.into_iter()
                        .map(|(n, c)| json!({"namespace": n, "slices": c}))
                        .collect::<Vec<_>>(),
                }))
            }
            other => Err(format!(
                "there is no tool {other:?}; the tools are remember, recall, forget, status"
            )),
        }
    }
}

impl ServerHandler for MemoryTools {
    fn get_info(&self) -> ServerInfo {
        ServerInfo {
            capabilities: ServerCapabilities::builder().enable_tools().build(),
            server_info: Implementation {
                name: "uctx".into(),
                title: Some("uctx memory".into()),
                version: env!("CARGO_PKG_VERSION").into(),
                icons: None,
                website_url: None,
            },
            instructions: Some(
                "uctx's memory pool: remember text, recall it by meaning with provenance, \
                 forget a slice or a namespace, see the pool's status."
                    .into(),
            ),
            ..ServerInfo::default()
        }
    }

    async fn list_tools(
        &self,
        _request: Option<PaginatedRequestParam>,
        _context: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, ErrorData> {
        Ok(ListToolsResult::with_all_items(tools()))
    }

    async fn call_tool(
        &self,
        request: CallToolRequestParam,
        _context: RequestContext<RoleServer>,
    ) -> Result<CallToolResult, ErrorData> {
        let me = self.clone();
        let name = request.name.to_string();
        let args = request.arguments.unwrap_or_default();
        let out = tokio::task::spawn_blocking(move || me.call(&name, &args))
            .await
            .map_err(|e| ErrorData::internal_error(e.to_string(), None))?;
        Ok(match out {
            Ok(v) => {
                let mut r = CallToolResult::success(vec![Content::text(v.to_string())]);
                r.structured_content = Some(v);
                r
            }
            Err(message) => CallToolResult::error(vec![Content::text(message)]),
        })
    }
}

/// MCP over stdio, until the client closes it (`uctx mcp`).
pub async fn serve_stdio(tools: MemoryTools) -> Result<(), String> {
    use rmcp::ServiceExt;
    let running = tools
        .serve(rmcp::transport::stdio())
        .await
        .map_err(|e| e.to_string())?;
    running.waiting().await.map_err(|e| e.to_string())?;
    Ok(())
}

/// MCP over streamable HTTP, for `/mcp` on the server.
pub fn http_service(
    memory: Arc<Memory>,
) -> rmcp::transport::streamable_http_server::StreamableHttpService<
    MemoryTools,
    rmcp::transport::streamable_http_server::session::local::LocalSessionManager,
> {
    use rmcp::transport::streamable_http_server::{
        session::local::LocalSessionManager, StreamableHttpServerConfig, StreamableHttpService,
    };
    let tools = MemoryTools::new(memory);
    StreamableHttpService::new(
        move || Ok(tools.clone()),
        Arc::new(LocalSessionManager::default()),
        StreamableHttpServerConfig::default(),
    )
}
