//! Integration tests of the engine, one binary (see each module).

mod backend;
mod checkpoint;
mod crash;
mod encoder;
mod fake_server;
mod lexical;
mod pool;
mod real_server;
mod reembed;
mod repair;
mod session;
