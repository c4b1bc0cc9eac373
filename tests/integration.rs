mod util;

mod cli;
mod lifecycle;
mod limits;
mod protocol;
