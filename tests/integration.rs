mod bufferevent;
mod reactor;
