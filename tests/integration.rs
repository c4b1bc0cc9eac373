mod util;

mod admin;
mod bufferevent;
mod cli;
mod fuzz_replay;
mod lifecycle;
mod limits;
mod protocol;
mod reactor;
mod systemd;
