//! Client TLS towards `scheme = "https"` upstreams.
