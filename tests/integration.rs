mod util;

mod admin;
mod bufferevent;
mod cli;
mod control;
mod faults;
mod fuzz_replay;
mod keys;
mod lanes;
mod lifecycle;
mod limits;
mod metrics;
mod probe;
mod protocol;
mod reactor;
mod sandbox;
mod systemd;
