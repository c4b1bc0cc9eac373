mod util;

mod admin;
mod bufferevent;
mod cli;
mod control;
mod keys;
mod lanes;
mod lifecycle;
mod limits;
mod protocol;
mod reactor;
mod systemd;
