//! ringport's conformance cases as a library: every case of
//! `docs/conformance.md`, written once, runnable against any [`Driver`] —
//! the backends of this repository (`tests/conformance`) or a driver of
//! your own:
//!
//! ```ignore
//! mod mydriver {
//!     ringport_testkit::conformance!(ringport_testkit::Target::new("mydriver", || {
//!         Ok(Box::new(MyDriver::new()?) as Box<dyn ringport::Driver>)
//!     }));
//! }
//! ```
//!
//! The module's name must be the target's name (the cases that run in a
//! child process re-run the test binary on `<name>::<child>`). Each case
//! becomes a test named `<name>::<case>`. A target whose factory fails is
//! reported as `SKIPPED <name>::<case>` on stderr, or fails the case when
//! `RINGPORT_REQUIRE_BACKENDS` lists its name.
//!
//! [`Driver`]: ringport::Driver

pub mod cases;
pub mod harness;

pub use harness::Target;

/// One case as a test (used by [`conformance!`]).
#[macro_export]
#[doc(hidden)]
macro_rules! case {
    ($t:expr, $name:ident) => {
        #[test]
        fn $name() {
            let t: $crate::Target = $t;
            if $crate::harness::available(t, stringify!($name)) {
                $crate::cases::$name(t)
            }
        }
    };
}

/// A helper that runs only in a child process (a re-executed test binary),
/// started by the case that needs it (used by [`conformance!`]).
#[macro_export]
#[doc(hidden)]
macro_rules! child {
    ($t:expr, $name:ident) => {
        #[test]
        #[ignore = "runs only as a child process of its case"]
        fn $name() {
            $crate::cases::$name($t)
        }
    };
}

/// Expands to one `#[test]` per conformance case, run against the target
/// `$t` (a [`Target`] expression). Expand it inside a module named after the
/// target.
#[macro_export]
macro_rules! conformance {
    ($t:expr) => {
        // Completions and buffers
        $crate::case!($t, c1_nop_completes_with_token);
        $crate::case!($t, c2_one_completion_per_submission);
        $crate::case!($t, c3_buffer_comes_back);
        $crate::case!($t, c4_slice_read_stays_inside_view);
        $crate::case!($t, c5_buffer_types_round_trip);
        $crate::case!($t, c6_submission_back_pressure);
        $crate::case!($t, c7_completion_queue_pressure);
        // Files
        $crate::case!($t, f1_read_at_offset);
        $crate::case!($t, f2_short_read_at_eof);
        $crate::case!($t, f3_write_then_read_back_and_sync);
        $crate::case!($t, f4_readv_writev);
        $crate::case!($t, f5_open_errors);
        $crate::case!($t, f6_read_on_never_opened_fd);
        $crate::case!($t, f7_many_reads_in_flight);
        $crate::case!($t, f8_stat_matches_std);
        $crate::case!($t, f9_close_cancels_and_consumes);
        // Sockets
        $crate::case!($t, s1_tcp_accept_connect);
        $crate::case!($t, s2_echo_one_mib);
        $crate::case!($t, s3_recv_after_peer_close);
        $crate::case!($t, s4_recv_after_reset);
        $crate::case!($t, s5_connect_refused);
        $crate::case!($t, s6_send_to_gone_peer);
        $crate::child!($t, s6_child);
        $crate::case!($t, s7_stream_order);
        $crate::case!($t, s8_udp);
        $crate::case!($t, s9_unix_stream_echo);
        $crate::case!($t, s10_shutdown_write);
        $crate::case!($t, s11_many_connections);
        $crate::child!($t, s11_client_child);
        $crate::case!($t, s12_pending_accept_is_idle);
        // Time
        $crate::case!($t, t1_timeout);
        $crate::case!($t, t2_read_deadline);
        $crate::case!($t, t3_timers_in_deadline_order);
        // Cancellation
        $crate::case!($t, x1_cancel_in_flight_read);
        $crate::case!($t, x2_cancel_after_completion);
        $crate::case!($t, x3_dropped_read_frees_buffer_once);
        $crate::case!($t, x4_read_after_dropped_read);
        $crate::case!($t, x5_shutdown_with_ops_in_flight);
        $crate::case!($t, x6_cancel_all_on_fd);
        // Threads and wake-ups
        $crate::case!($t, w1_wake_from_another_thread);
        // Bad input
        $crate::case!($t, b1_unsupported_op);
        $crate::case!($t, b2_fd_above_fd_setsize);
        $crate::case!($t, b3_zero_length_ops);
        $crate::case!($t, b4_bad_sockaddr);
        // Lifecycle edges (core)
        $crate::case!($t, l1_slice_read_past_init_zeroes_the_gap);
        $crate::case!($t, l2_offset_out_of_range_is_invalid_input);
        $crate::case!($t, l3_huge_fd_is_ebadf);
        $crate::case!($t, l4_duration_max_means_never);
        $crate::case!(
            $t,
            l5_fd_dropped_outside_block_on_is_closed_through_the_driver
        );
        $crate::case!(
            $t,
            l6_fd_dropped_on_another_thread_is_closed_through_the_driver
        );
        $crate::case!($t, l7_fd_dropped_after_its_runtime_is_closed);
        $crate::case!($t, l8_abandoned_open_does_not_leak_its_fd);
        // Stream order and lifecycle edges (uring found them first)
        $crate::case!($t, st1_cancelled_queued_write_keeps_stream_order);
        $crate::case!($t, st2_cancel_ends_a_partial_send);
        $crate::case!($t, st3_ops_after_close_refused_or_completed);
        $crate::case!($t, st4_drop_with_ops_in_flight_closes_the_fd);
        $crate::case!($t, st5_runtime_drop_closes_a_blocked_file);
        // The file path's lifecycle (found on aio)
        $crate::case!($t, a1_no_op_starts_on_a_closing_file);
        $crate::child!($t, a1_child);
        $crate::case!($t, a2_cancel_of_a_close_touches_no_other_op);
        $crate::case!($t, a3_dropped_drivers_close_their_fds);
        $crate::child!($t, a3_child);
        $crate::case!($t, a4_reused_fd_number_is_routed_by_its_kind);
        $crate::child!($t, a4_child);
        // Emulation edges (readiness shim, pool)
        $crate::case!($t, r1_current_position_file_writes_in_order);
        $crate::case!($t, r2_deadline_ends_running_op);
        $crate::case!($t, r3_cancel_running_op);
        $crate::case!($t, r4_poll_either_direction);
        $crate::case!($t, r5_unix_stream_send_resumes);
        $crate::case!($t, r6_wake_after_drop_is_harmless);
        $crate::child!($t, r6_child);
        $crate::case!($t, r7_reused_fd_number_is_new);
        $crate::case!($t, r8_drop_with_blocked_file_ops);
        $crate::case!($t, r9_drop_closes_undelivered_open);
        $crate::case!($t, r10_cancel_of_huge_fd_reaches_nothing);
        $crate::case!($t, r11_open_abandoned_by_timeout_leaks_nothing);
        $crate::case!($t, a5_drop_with_a_blocked_file_read_closes_the_fd);
        $crate::child!($t, a5_child);
        $crate::case!($t, a6_runtime_drop_with_a_blocked_file_read_closes_the_fd);
        $crate::child!($t, a6_child);
        $crate::case!($t, a7_wake_runs_its_task_while_a_file_read_is_stuck);
        $crate::child!($t, a7_child);
        $crate::case!($t, st6_write_deadline_reports_bytes_out);
        $crate::case!($t, l9_op_future_dropped_on_another_thread_is_cancelled);
        // Pooled reads
        $crate::case!($t, bp1_pooled_recv_gets_the_bytes_in_a_pool_buffer);
        $crate::case!($t, bp2_pool_refills_on_drop_and_exhaustion_is_enobufs);
        $crate::case!($t, bp3_a_waiting_pooled_recv_holds_no_buffer);
        $crate::case!($t, bp4_pooled_file_read_at_an_offset);
        // Multishot
        $crate::case!($t, ms1_incoming_yields_each_connection);
        $crate::case!($t, ms2_recv_stream_yields_every_byte_until_the_peer_closes);
        $crate::case!(
            $t,
            ms3_a_dropped_recv_stream_ends_and_later_bytes_reach_a_read
        );
        // Zero-copy sends
        $crate::case!(
            $t,
            zc1_send_zc_is_byte_exact_in_order_and_gives_the_buffer_back
        );
        // The file system by path, and send_file
        $crate::case!($t, p1_metadata_by_path_matches_std);
        $crate::case!($t, p2_dirs_and_removal_match_std);
        $crate::case!($t, p3_rename_and_links_match_std);
        $crate::case!($t, p4_read_dir_matches_std);
        $crate::case!($t, p5_set_len_and_allocate);
        $crate::case!($t, p6_open_beneath);
        $crate::case!($t, p7_atomic_replace);
        $crate::case!($t, p8_dir_close_waits_for_open_beneath);
        $crate::case!($t, p9_refused_fs_ops_run_on_a_helper_thread);
        $crate::case!($t, z1_send_file_ranges);
        $crate::case!($t, z2_send_file_one_mib_slow_reader);
        $crate::case!($t, z3_send_file_keeps_stream_order);
        $crate::case!($t, z4_send_file_to_gone_peer);
        $crate::case!($t, z5_ended_send_file_reports_bytes_out);
        $crate::case!($t, z6_close_of_a_send_files_file_waits_for_it);
        $crate::case!($t, z7_cancelled_send_files_leave_nothing_behind);
        // Registered (fixed) buffers
        $crate::case!($t, fx1_fixed_reads_and_writes_match_std);
        $crate::case!($t, fx2_the_buffer_returns_to_the_registry_on_drop);
        $crate::case!($t, fx3_an_exhausted_registry_is_enobufs_at_once);
        $crate::case!($t, fx4_driver_drop_with_a_fixed_read_in_flight);
        $crate::case!($t, fx5_runtime_drop_with_a_fixed_read_in_flight);
        $crate::case!($t, fx6_cancel_mid_read);
        $crate::case!($t, fx7_fixed_stream_write_completes_whole);
        $crate::case!($t, fx8_many_registries_each_read_byte_exact);
    };
}
