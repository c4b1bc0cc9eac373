mod util;

mod cli;
mod protocol;
