import Foundation

/// A value behind a `pthread_mutex_t`, for state that threads share (the buffer cache, the OpenBLAS thread hold,
/// tokenizer caches).
///
/// Why not `Synchronization.Mutex`: on Linux it waits on futexes directly, which ThreadSanitizer cannot see, so every
/// access it guards is reported as a race (`Tests/Sanitizers/README.md` has a twelve-line program that shows it). A
/// pthread mutex is what TSan understands, so `swift test --sanitize=thread` runs with no suppressions and a real race
/// stands out.
package final class Locked<State>: @unchecked Sendable {
    private let mutex = UnsafeMutablePointer<pthread_mutex_t>.allocate(capacity: 1)
    private var state: State

    package init(_ state: State) {
        self.state = state
        pthread_mutex_init(mutex, nil)
    }

    deinit {
        pthread_mutex_destroy(mutex)
        mutex.deallocate()
    }

    /// Runs `body` with the state, holding the lock.
    package func withLock<R>(_ body: (inout State) throws -> R) rethrows -> R {
        pthread_mutex_lock(mutex)
        defer { pthread_mutex_unlock(mutex) }
        return try body(&state)
    }
}
