mod util;

mod protocol;
