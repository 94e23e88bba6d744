//! `RedisStore`: Redis and Redis Cluster. (Being written for issue 4.)
