//! Published ports: a TCP/UDP proxy in the supervisor.
