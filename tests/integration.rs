mod util;

mod access;
mod admin;
mod bufferevent;
mod cli;
mod control;
mod fuzz_replay;
mod haproxy;
mod ipv6;
mod lifecycle;
mod limits;
mod probe;
mod protocol;
mod proxy;
mod reactor;
mod sandbox;
mod systemd;
