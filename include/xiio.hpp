#pragma once
// xiio: a really simple coroutine runtime for Linux. This header is the table of contents.
//
//   xiio/errors.hpp   CancelledError, TimeoutError, IncompleteReadError
//   xiio/loop.hpp     Files; the loop (detail), with xiio/detail/poller.hpp (Clock, Events,
//                     the Poller seam) and xiio/detail/remote_queue.hpp
//   xiio/task.hpp     Task<T>, run()
//   xiio/core.hpp     Condition, Future, sleep, sleep_until, yield
//   xiio/io.hpp       Fd, wait_readable, wait_writable, read, read_exactly, write, writeall
//   xiio/multiplex.hpp TaskGroup, task_group, TaskHandle, gather, timeout, move_on_after
//   xiio/race.hpp     race
//   xiio/shield.hpp   shield
//   xiio/generator.hpp Generator: an async generator (co_yield), consumed with next()
//   xiio/threads.hpp  ThreadPool, in_thread
//   xiio/loops.hpp    LoopHandle, this_loop, LoopThread, on_loop: loops on several threads
//   xiio/spawn.hpp    Process, spawn_process, SpawnOptions
//   xiio/process.hpp  run_process, ProcessOptions, CompletedProcess, CalledProcessError
//   xiio/signals.hpp  SignalSubscription, subscribe_signals
//   xiio/sync.hpp     Event, Semaphore, Lock, Queue, ClosedError
//   xiio/channel.hpp  Channel: a bounded queue between loops on threads
//   xiio/dump.hpp     dump_tasks
//   xiio/address.hpp  Address
//   xiio/net.hpp      Socket, Listener, resolve, connect_tcp, connect_unix, gai_category
//   xiio/datagram.hpp DatagramSocket
//   xiio/serve.hpp    serve, ServeOptions
//   xiio/stream.hpp   StreamReader, LimitOverrunError
//
// The Asio compat layer is separate: #include <xiio/asio.hpp>.

#include <xiio/address.hpp>
#include <xiio/channel.hpp>
#include <xiio/core.hpp>
#include <xiio/datagram.hpp>
#include <xiio/dump.hpp>
#include <xiio/errors.hpp>
#include <xiio/generator.hpp>
#include <xiio/io.hpp>
#include <xiio/loop.hpp>
#include <xiio/loops.hpp>
#include <xiio/multiplex.hpp>
#include <xiio/net.hpp>
#include <xiio/process.hpp>
#include <xiio/race.hpp>
#include <xiio/serve.hpp>
#include <xiio/shield.hpp>
#include <xiio/signals.hpp>
#include <xiio/spawn.hpp>
#include <xiio/stream.hpp>
#include <xiio/sync.hpp>
#include <xiio/task.hpp>
#include <xiio/threads.hpp>
