mod util;

mod admin;
mod cli;
mod lifecycle;
mod limits;
mod protocol;
mod reactor;
mod systemd;
