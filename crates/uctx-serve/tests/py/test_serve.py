"""`uctx serve` with the official `ollama` and `openai` Python clients.

Each test starts `uctx serve --upstream reader` on a free loopback port with a pool of
its own. The reader answers only from what is in its window, so an answer that states a
fact proves the fact reached the upstream prompt.

Run: UCTX_BIN=target/debug/uctx python -m unittest -v crates/uctx-serve/tests/py/test_serve.py
"""

import json
import os
import socket
import subprocess
import tempfile
import threading
import time
import unittest
import urllib.error
import urllib.request

import ollama
import openai

UCTX = os.environ.get("UCTX_BIN", "target/debug/uctx")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """A `uctx serve` process; stops on exit."""

    def __init__(self, ctx=2048, token=None, listen_host="127.0.0.1", extra=(), pool=None,
                 upstream="reader"):
        self.dir = tempfile.TemporaryDirectory()
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.args = [
            UCTX, "--pool", pool or os.path.join(self.dir.name, "pool"), "serve",
            "--upstream", upstream,
            "--listen", f"{listen_host}:{self.port}", *extra,
        ]
        if ctx is not None:
            self.args += ["--ctx", str(ctx)]
        self.env = dict(os.environ)
        self.env.pop("UCTX_TOKEN", None)
        if token is not None:
            self.env["UCTX_TOKEN"] = token
        self.token = token

    def __enter__(self):
        self.proc = subprocess.Popen(
            self.args, env=self.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        deadline = time.time() + 30
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(self.proc.stderr.read().decode())
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return self
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("uctx serve did not start")

    def __exit__(self, *exc):
        self.proc.terminate()
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.proc.stdout.close()
        self.proc.stderr.close()
        self.dir.cleanup()

    def headers(self):
        return {"Authorization": f"Bearer {self.token}"} if self.token else {}

    def status(self):
        req = urllib.request.Request(self.url + "/api/uctx/status", headers=self.headers())
        with urllib.request.urlopen(req, timeout=30) as r:
            return json.load(r)

    def ollama(self, **kw):
        return ollama.Client(host=self.url, headers=self.headers(), **kw)

    def openai(self, key=None):
        return openai.OpenAI(
            base_url=self.url + "/v1", api_key=key or self.token or "unused", max_retries=0
        )


QUESTION = [
    {"role": "system", "content": "You answer from what you were told."},
    {"role": "user", "content": "The gateway port is 8443. What is the gateway port?"},
]


def filler(i):
    return (
        f"Log {i}: the build of module {i} went through review; we walked over the queue "
        f"handling, the retry loops, the tracing spans and the test matrix for platform {i}, "
        "noted two flaky cases, reran them until green, and agreed that nothing in this "
        "step changes the plan. "
        + "Further notes on routine chores and cleanup follow without any new decision. " * 8
    )


def words_tokens(text):
    return len(text.split()) * 4 // 3


class Chat(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.server = Server().__enter__()

    @classmethod
    def tearDownClass(cls):
        cls.server.__exit__(None, None, None)

    def test_ollama_streaming_and_not(self):
        c = self.server.ollama()
        chunks = list(c.chat(model="reader", messages=QUESTION, stream=True))
        self.assertGreater(len(chunks), 1)
        text = "".join(ch.message.content or "" for ch in chunks)
        self.assertIn("8443", text)
        last = chunks[-1]
        self.assertTrue(last.done)
        self.assertEqual(last.done_reason, "stop")
        self.assertGreater(last.prompt_eval_count, 0)
        self.assertGreater(last.eval_count, 0)
        self.assertIsNotNone(last.total_duration)
        r = c.chat(model="reader", messages=QUESTION, stream=False)
        self.assertTrue(r.done)
        self.assertIn("8443", r.message.content)

    def test_ollama_routes(self):
        c = self.server.ollama()
        self.assertIn("reader", [m.model for m in c.list().models])
        show = c.show("reader")
        self.assertIn("num_ctx", show.parameters)
        c.ps()

    def test_openai_streaming_with_and_without_usage(self):
        c = self.server.openai()
        for include in (False, True):
            kw = {"stream_options": {"include_usage": True}} if include else {}
            chunks = list(
                c.chat.completions.create(model="reader", messages=QUESTION, stream=True, **kw)
            )
            text = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
            self.assertIn("8443", text)
            usage = [ch for ch in chunks if ch.usage is not None]
            if include:
                self.assertEqual(len(usage), 1)
                self.assertEqual(usage[0].choices, [])
                self.assertGreater(usage[0].usage.prompt_tokens, 0)
                self.assertIs(chunks[-1], usage[0])
            else:
                self.assertEqual(usage, [])
                self.assertTrue(all(ch.choices for ch in chunks))
            reasons = [ch.choices[0].finish_reason for ch in chunks if ch.choices]
            self.assertEqual(reasons[-1], "stop")
        r = c.chat.completions.create(model="reader", messages=QUESTION)
        self.assertIn("8443", r.choices[0].message.content)
        self.assertGreater(r.usage.total_tokens, 0)
        self.assertEqual([m.id for m in c.models.list().data], ["reader"])

    def test_openai_error_shape(self):
        c = self.server.openai()
        with self.assertRaises(openai.BadRequestError) as e:
            c.chat.completions.create(
                model="reader", messages=[{"role": "assistant", "content": "hello"}]
            )
        self.assertIn("last message", str(e.exception))


class Sessions(unittest.TestCase):
    def test_a_first_turn_fact_reaches_the_upstream_past_20000_tokens(self):
        with Server(ctx=2048) as s:
            c = s.ollama()
            messages = [
                {"role": "system", "content": "You are a build assistant."},
                {"role": "user", "content": "Decision: the deploy token is kestrel-42."},
            ]
            sent, i = 0, 0
            prompts = []
            while sent < 20_000:
                r = c.chat(model="reader", messages=messages, stream=False)
                prompts.append(r.prompt_eval_count)
                messages.append({"role": "assistant", "content": r.message.content})
                i += 1
                f = filler(i)
                sent += words_tokens(f)
                messages.append({"role": "user", "content": f})
            r = c.chat(model="reader", messages=messages, stream=False)
            messages.append({"role": "assistant", "content": r.message.content})
            messages.append({"role": "user", "content": "What is the deploy token?"})
            r = c.chat(model="reader", messages=messages, stream=False)
            self.assertIn("kestrel-42", r.message.content)
            # No upstream prompt exceeded the window (the answer's reserve apart).
            self.assertLessEqual(max(prompts + [r.prompt_eval_count]), 2048)
            st = s.status()
            self.assertEqual(len(st["sessions"]), 1, st)
            self.assertEqual(st["sessions"][0]["overflows"], 0)
            self.assertGreater(st["sessions"][0]["paged_in"], 0)

    def test_resent_fifty_times_each_message_is_stored_once(self):
        with Server() as s:
            c = s.openai()
            messages = [{"role": "user", "content": "The cache size is 64 MB."}]
            for i in range(50):
                r = c.chat.completions.create(model="reader", messages=messages)
                messages.append({"role": "assistant", "content": r.choices[0].message.content})
                messages.append({"role": "user", "content": f"Step {i} is done; the next follows."})
            st = s.status()
            self.assertEqual(len(st["sessions"]), 1, st)
            self.assertEqual(st["sessions"][0]["messages"], 100)
            self.assertEqual(st["pool"]["slices"], 100)
            # `uctx status` lists the server's conversations too.
            pool = os.path.join(s.dir.name, "pool")
            out = subprocess.run([UCTX, "--pool", pool, "status"], capture_output=True, check=True)
            self.assertIn(b"served    1 conversations", out.stdout)
            out = subprocess.run([UCTX, "--pool", pool, "--json", "status"], capture_output=True, check=True)
            served = json.loads(out.stdout)["serve_sessions"]
            self.assertEqual(served[0]["messages"], 100)
            self.assertEqual(served[0]["turns"], 50)

    def test_an_edited_turn_forks(self):
        with Server() as s:
            c = s.ollama()
            u1 = {"role": "user", "content": "The color is blue."}
            a1 = {"role": "assistant", "content": c.chat(model="reader", messages=[u1]).message.content}
            u2 = {"role": "user", "content": "The shape is round."}
            c.chat(model="reader", messages=[u1, a1, u2])
            edited = {"role": "user", "content": "What is the shape? What is the color?"}
            r = c.chat(model="reader", messages=[u1, a1, edited])
            self.assertNotIn("round", r.message.content)
            self.assertIn("blue", r.message.content)
            st = s.status()
            self.assertEqual(len(st["sessions"]), 2, st)
            self.assertEqual(st["sessions"][1]["forked_from"], st["sessions"][0]["id"])

    def test_two_interleaved_clients_never_see_each_other(self):
        with Server() as s:
            convs = {
                "alpha": [{"role": "user", "content": "The alpha code is 111."}],
                "beta": [{"role": "user", "content": "The beta code is 222."}],
            }
            mine = {"alpha": "111", "beta": "222"}
            clients = {"alpha": s.ollama(), "beta": s.openai()}
            errors = []

            def talk(name):
                try:
                    for i in range(8):
                        m = convs[name]
                        m.append({"role": "user", "content": f"Turn {i}. What is the {name} code? What is the other code?"})
                        if name == "alpha":
                            text = clients[name].chat(model="reader", messages=m).message.content
                        else:
                            r = clients[name].chat.completions.create(model="reader", messages=m)
                            text = r.choices[0].message.content
                        other = "222" if name == "alpha" else "111"
                        if mine[name] not in text or other in text:
                            errors.append((name, i, text))
                        m.append({"role": "assistant", "content": text})
                except Exception as e:  # reported below
                    errors.append((name, repr(e)))

            threads = [threading.Thread(target=talk, args=(n,)) for n in convs]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            self.assertEqual(errors, [])
            self.assertEqual(len(s.status()["sessions"]), 2)


ROUTES = [
    ("GET", "/"), ("GET", "/api/version"), ("GET", "/api/tags"), ("GET", "/api/ps"),
    ("POST", "/api/show"), ("POST", "/api/chat"), ("POST", "/api/generate"),
    ("POST", "/api/embed"), ("GET", "/v1/models"), ("POST", "/v1/chat/completions"),
    ("POST", "/v1/completions"), ("POST", "/v1/embeddings"), ("GET", "/api/uctx/status"),
    ("POST", "/s/x/api/chat"), ("POST", "/mcp"),
]


class Auth(unittest.TestCase):
    def test_non_loopback_without_a_token_refuses_to_start(self):
        s = Server(listen_host="0.0.0.0")
        p = subprocess.run(s.args, env=s.env, capture_output=True, timeout=60)
        self.assertNotEqual(p.returncode, 0)
        self.assertIn(b"--token", p.stderr)
        s.dir.cleanup()

    def test_a_wrong_token_gets_401_on_every_route(self):
        with Server(token="right-token", listen_host="0.0.0.0") as s:
            for method, path in ROUTES:
                for auth in (None, "Bearer wrong-token", "right-token"):
                    headers = {"Content-Type": "application/json"}
                    if auth:
                        headers["Authorization"] = auth
                    req = urllib.request.Request(
                        s.url + path, method=method, headers=headers,
                        data=b"{}" if method == "POST" else None,
                    )
                    with self.assertRaises(urllib.error.HTTPError, msg=f"{method} {path} {auth}") as e:
                        urllib.request.urlopen(req, timeout=30)
                    self.assertEqual(e.exception.code, 401, f"{method} {path} {auth}")
            with self.assertRaises(openai.AuthenticationError):
                s.openai(key="wrong-token").chat.completions.create(model="reader", messages=QUESTION)
            r = s.openai().chat.completions.create(model="reader", messages=QUESTION)
            self.assertIn("8443", r.choices[0].message.content)
            self.assertTrue(s.ollama().chat(model="reader", messages=QUESTION).done)


if __name__ == "__main__":
    unittest.main(verbosity=2)


class Mcp(unittest.TestCase):
    """The official `mcp` client lists and calls every tool, over stdio and over HTTP."""

    async def exercise(self, session):
        await session.initialize()
        names = sorted(t.name for t in (await session.list_tools()).tools)
        self.assertEqual(names, ["forget", "recall", "remember", "status"])

        async def call(name, args):
            r = await session.call_tool(name, args)
            failed = bool(getattr(r, "is_error", None) or getattr(r, "isError", None))
            return failed, r.content[0].text if failed else json.loads(r.content[0].text)

        _, out = await call("remember", {"text": "The release train leaves on Thursdays.", "namespace": "team"})
        sid = out["remembered"][0]["id"]
        _, out = await call("recall", {"query": "when does the release train leave", "k": 3})
        hit = out["hits"][0]
        self.assertEqual(hit["id"], sid)
        for k in ("id", "turn", "source", "namespace", "score"):
            self.assertIn(k, hit)
        _, out = await call("status", {})
        self.assertEqual(out["slices"], 1)
        _, out = await call("forget", {"id": sid})
        self.assertEqual(out["forgotten"], 1)
        failed, text = await call("forget", {})
        self.assertTrue(failed)
        self.assertIn("id", text)

    def test_stdio(self):
        import asyncio
        from mcp import ClientSession, StdioServerParameters
        from mcp.client.stdio import stdio_client

        async def run():
            with tempfile.TemporaryDirectory() as d:
                params = StdioServerParameters(command=UCTX, args=["--pool", os.path.join(d, "pool"), "mcp"])
                async with stdio_client(params) as (r, w):
                    async with ClientSession(r, w) as session:
                        await self.exercise(session)

        asyncio.run(run())

    def test_http(self):
        import asyncio
        from mcp import ClientSession
        from mcp.client import streamable_http

        def transport(s):
            url = s.url + "/mcp"
            if hasattr(streamable_http, "streamable_http_client"):
                from mcp.shared._httpx_utils import create_mcp_http_client

                client = create_mcp_http_client(headers=s.headers())
                return streamable_http.streamable_http_client(url, http_client=client)
            return streamable_http.streamablehttp_client(url, headers=s.headers())

        async def run(s):
            async with transport(s) as streams:
                async with ClientSession(streams[0], streams[1]) as session:
                    await self.exercise(session)

        with Server(token="t0k") as s:
            asyncio.run(run(s))


LOAD_SECONDS = float(os.environ.get("UCTX_LOAD_SECONDS", "20"))


def load(s, clients, seconds, histories, stop=None):
    """`clients` streaming clients, each its own conversation, until `seconds` pass (or
    `stop` is set); returns the errors. `histories[i]` is what client i acknowledged."""
    errors = []
    deadline = time.time() + seconds

    def client(i):
        c = s.ollama(timeout=60)
        code = f"{1000 + i}"
        m = histories[i]
        if not m:
            m.append({"role": "user", "content": f"Client {i} here. The code of client {i} is {code}."})
        n = 0
        while time.time() < deadline and not (stop and stop.is_set()):
            try:
                text = "".join(
                    ch.message.content or ""
                    for ch in c.chat(model="reader", messages=m, stream=True)
                )
            except Exception as e:  # a killed server ends the stream; that is the test
                if not (stop and stop.is_set()):
                    errors.append((i, repr(e)))
                return
            if m[-1]["content"].endswith("?") and code not in text:
                errors.append((i, n, text))
            m.append({"role": "assistant", "content": text})
            n += 1
            q = f"Turn {n} of client {i}. What is the code of client {i}?" if n % 3 == 0 else f"Turn {n} of client {i}: routine step, nothing new."
            m.append({"role": "user", "content": q})

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return errors


class Load(unittest.TestCase):
    def test_16_streaming_clients_then_sigkill_and_restart(self):
        pool_dir = tempfile.TemporaryDirectory()
        pool = os.path.join(pool_dir.name, "pool")

        def server():
            return Server(pool=pool)

        histories = [[] for _ in range(16)]
        with server() as s:
            errors = load(s, 16, LOAD_SECONDS, histories)
            self.assertEqual(errors, [])
            st = s.status()
            # No turn lost or stored twice: each conversation holds what its client saw.
            self.assertEqual(len(st["sessions"]), 16, st)
            acked = sorted(len(h) - 1 for h in histories)
            held = sorted(x["messages"] for x in st["sessions"])
            self.assertEqual(held, acked)
            self.assertEqual(sorted(x["slices"] for x in st["sessions"]), acked)
            # Now kill it in the middle of the load.
            stop = threading.Event()
            killer = threading.Timer(2.0, lambda: (s.proc.kill(), stop.set()))
            killer.start()
            load(s, 16, 30, histories, stop)
            killer.join()
        with server() as s:
            # The pool opens whole; every conversation goes on from what its client saw.
            out = subprocess.run([UCTX, "--pool", pool, "--json", "status"], capture_output=True, check=True)
            st = json.loads(out.stdout)
            self.assertEqual(st["damaged"], [])
            for h in histories:
                while h and h[-1]["role"] != "user":
                    h.pop()
            errors = load(s, 16, 3, histories)
            self.assertEqual(errors, [])
            # A turn the server finished but whose answer the kill cut off is asked again
            # by its client: answered on a fork, so at most one more per client.
            n = len(s.status()["sessions"])
            self.assertTrue(16 <= n <= 32, n)
        pool_dir.cleanup()


REAL = os.environ.get("UCTX_TEST_SERVER")


@unittest.skipUnless(REAL, "UCTX_TEST_SERVER names no real model server (llama-server's /v1 URL)")
class RealModel(unittest.TestCase):
    """The real-model tier: the same clients through `uctx serve` to a real llama-server."""

    @classmethod
    def setUpClass(cls):
        cls.server = Server(ctx=None, upstream=f"openai:{REAL}").__enter__()

    @classmethod
    def tearDownClass(cls):
        cls.server.__exit__(None, None, None)

    def test_openai_streaming_and_usage(self):
        c = self.server.openai()
        msgs = [{"role": "user", "content": "Say hello in three words."}]
        r = c.chat.completions.create(model="smollm2", messages=msgs, max_tokens=16)
        self.assertTrue(r.choices[0].message.content)
        self.assertLessEqual(r.usage.prompt_tokens, 2048)
        for include in (False, True):
            kw = {"stream_options": {"include_usage": True}} if include else {}
            chunks = list(c.chat.completions.create(
                model="smollm2", messages=msgs, max_tokens=16, stream=True, **kw))
            usage = [ch for ch in chunks if ch.usage is not None]
            self.assertEqual(len(usage), 1 if include else 0)
            if include:
                self.assertEqual(usage[0].choices, [])

    def test_tool_calls_round_trip(self):
        c = self.server.openai()
        tools = [{"type": "function", "function": {
            "name": "weather", "description": "The weather in a city",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                           "required": ["city"]}}}]
        ask = {"role": "user", "content": "What is the weather in Oslo? Use the weather tool."}
        first = c.chat.completions.create(model="smollm2", messages=[ask], tools=tools,
                                          max_tokens=48)
        self.assertIn(first.choices[0].finish_reason, ("stop", "length", "tool_calls"))
        # Whatever the small model chose, the client sends a call back with its result:
        # the call and its result reach the model together, streaming and not.
        history = [
            ask,
            {"role": "assistant", "content": None, "tool_calls": [
                {"id": "call_1", "type": "function",
                 "function": {"name": "weather", "arguments": "{\"city\": \"Oslo\"}"}}]},
            {"role": "tool", "tool_call_id": "call_1", "content": "Sunny, 21 degrees, light wind."},
        ]
        r = c.chat.completions.create(model="smollm2", messages=history, tools=tools,
                                      max_tokens=32)
        self.assertIsNotNone(r.choices[0].finish_reason)
        self.assertLessEqual(r.usage.prompt_tokens, 2048)
        # Streaming, in a conversation of its own (the same history again would be a
        # regeneration, which forks).
        bergen = json.loads(json.dumps(history).replace("Oslo", "Bergen").replace(
            "Sunny, 21 degrees, light wind.", "Rain, 12 degrees, strong wind."))
        chunks = list(c.chat.completions.create(
            model="smollm2", messages=bergen, tools=tools, max_tokens=32, stream=True))
        self.assertTrue(any(ch.choices and ch.choices[0].finish_reason for ch in chunks))
        # Each result is in the pool as a tool slice, once.
        for result in ("Sunny, 21 degrees", "Rain, 12 degrees"):
            out = subprocess.run(
                [UCTX, "--pool", self.server.args[2], "--json", "recall", result + " wind",
                 "-k", "20"], capture_output=True, text=True, check=True)
            hits = [h for h in json.loads(out.stdout) if result in h["text"]]
            self.assertEqual([h["source"] for h in hits], ["tool"], out.stdout)

    def test_ollama_client_and_a_conversation_past_the_window(self):
        c = self.server.ollama(timeout=300)
        messages = [{"role": "user", "content": "Remember this: the deploy token is kestrel-42."}]
        for i in range(12):
            r = c.chat(model="smollm2", messages=messages, options={"num_predict": 24})
            self.assertTrue(r.done)
            self.assertLessEqual(r.prompt_eval_count, 2048)
            messages.append({"role": "assistant", "content": r.message.content})
            messages.append({"role": "user", "content": filler(i)})
        st = self.server.status()
        self.assertEqual(st["sessions"][0]["overflows"], 0, st)
