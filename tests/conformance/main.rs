//! The conformance suite: every case of `shared/CONFORMANCE.md`, written once
//! (in `cases/`) and run on every backend this build has, each as its own
//! test named `<backend>::<case>` (e.g. `uring::f2_short_read_at_eof`).
//!
//! A backend that cannot start on this machine is reported on stderr as
//! `SKIPPED <backend>::<case>: ...`; if `RINGPORT_REQUIRE_BACKENDS` lists it,
//! that is a failure instead.

mod cases;
mod harness;

macro_rules! case {
    ($b:expr, $name:ident) => {
        #[test]
        fn $name() {
            if crate::harness::available($b, stringify!($name)) {
                crate::cases::$name($b)
            }
        }
    };
}

/// Helpers that run in a child process (re-executed test binary); ignored in
/// normal runs, started by the case that needs them.
macro_rules! child {
    ($b:expr, $name:ident) => {
        #[test]
        #[ignore = "runs only as a child process of its case"]
        fn $name() {
            crate::cases::$name($b)
        }
    };
}

macro_rules! conformance {
    ($b:expr) => {
        // Completions and buffers
        case!($b, c1_nop_completes_with_token);
        case!($b, c2_one_completion_per_submission);
        case!($b, c3_buffer_comes_back);
        case!($b, c4_slice_read_stays_inside_view);
        case!($b, c5_buffer_types_round_trip);
        case!($b, c6_submission_back_pressure);
        case!($b, c7_completion_queue_pressure);
        // Files
        case!($b, f1_read_at_offset);
        case!($b, f2_short_read_at_eof);
        case!($b, f3_write_then_read_back_and_sync);
        case!($b, f4_readv_writev);
        case!($b, f5_open_errors);
        case!($b, f6_read_on_never_opened_fd);
        case!($b, f7_many_reads_in_flight);
        case!($b, f8_stat_matches_std);
        case!($b, f9_close_cancels_and_consumes);
        // Sockets
        case!($b, s1_tcp_accept_connect);
        case!($b, s2_echo_one_mib);
        case!($b, s3_recv_after_peer_close);
        case!($b, s4_recv_after_reset);
        case!($b, s5_connect_refused);
        case!($b, s6_send_to_gone_peer);
        child!($b, s6_child);
        case!($b, s7_stream_order);
        case!($b, s8_udp);
        case!($b, s9_unix_stream_echo);
        case!($b, s10_shutdown_write);
        case!($b, s11_many_connections);
        child!($b, s11_client_child);
        case!($b, s12_pending_accept_is_idle);
        // Time
        case!($b, t1_timeout);
        case!($b, t2_read_deadline);
        case!($b, t3_timers_in_deadline_order);
        // Cancellation
        case!($b, x1_cancel_in_flight_read);
        case!($b, x2_cancel_after_completion);
        case!($b, x3_dropped_read_frees_buffer_once);
        case!($b, x4_read_after_dropped_read);
        case!($b, x5_shutdown_with_ops_in_flight);
        case!($b, x6_cancel_all_on_fd);
        // Threads and wake-ups
        case!($b, w1_wake_from_another_thread);
        // Bad input
        case!($b, b1_unsupported_op);
        case!($b, b2_fd_above_fd_setsize);
        case!($b, b3_zero_length_ops);
        case!($b, b4_bad_sockaddr);
        // Lifecycle edges (core)
        case!($b, l1_slice_read_past_init_zeroes_the_gap);
        case!($b, l2_offset_out_of_range_is_invalid_input);
        case!($b, l3_huge_fd_is_ebadf);
        case!($b, l4_duration_max_means_never);
        // Emulation edges (readiness shim, pool)
        case!($b, r1_current_position_file_writes_in_order);
        case!($b, r2_deadline_ends_running_op);
        case!($b, r3_cancel_running_op);
        case!($b, r4_poll_either_direction);
        case!($b, r5_unix_stream_send_resumes);
        case!($b, r6_wake_after_drop_is_harmless);
        child!($b, r6_child);
        case!($b, r7_reused_fd_number_is_new);
        case!($b, r8_drop_with_blocked_file_ops);
        case!($b, r9_drop_closes_undelivered_open);
        case!($b, r10_cancel_of_huge_fd_reaches_nothing);
        case!($b, r11_open_abandoned_by_timeout_leaks_nothing);
    };
}

#[cfg(target_os = "linux")]
mod uring {
    conformance!(ringport::Backend::Uring);
}

mod epoll {
    conformance!(ringport::Backend::Epoll);
}

mod poll {
    conformance!(ringport::Backend::Poll);
}

mod select {
    conformance!(ringport::Backend::Select);
}

mod sigio {
    conformance!(ringport::Backend::Sigio);
}

mod aio {
    conformance!(ringport::Backend::Aio);
}
