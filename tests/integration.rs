mod reactor;
