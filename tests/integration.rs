mod util;

mod cli;
mod lifecycle;
mod protocol;
