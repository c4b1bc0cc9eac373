mod util;

mod admin;
mod bufferevent;
mod cli;
mod control;
mod faults;
mod lifecycle;
mod limits;
mod protocol;
mod reactor;
mod systemd;
