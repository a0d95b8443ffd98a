import CMPI
import Foundation
import ReinsTensor
import Synchronization

/// A failed MPI call, with MPI's own description of the error.
public struct MPIError: Error, CustomStringConvertible {
    public let call: String
    public let code: Int32
    public let detail: String
    public var description: String { "\(call) failed (MPI error \(code)): \(detail)" }
}

/// The processes `mpirun` started, as a ``DataParallelGroup``: MPI's world communicator, with gradient sums as
/// all-reduces issued while backward runs (each bucket as soon as its gradients are final, in the same order on every
/// process) and exchanges as `MPI_Allgatherv`.
///
/// MPI is started once per process (``start()``), with errors returned to the caller rather than aborting, so that
/// a failure becomes a Swift error; a process that cannot go on must then end the whole job with ``abort(_:)``, since
/// the others would otherwise wait for it in their next collective. A process that dies (killed, crashed) is noticed
/// by `mpirun`, which ends the others and names it.
public final class MPIGroup: DataParallelGroup, @unchecked Sendable {
    public let rank: Int
    public let size: Int
    private let world: MPI_Comm
    /// Held around every MPI call: MPI is started for serialized calls from any thread.
    private let mpi = Mutex<Void>(())

    private static let shared = Mutex<MPIGroup?>(nil)

    private init(rank: Int, size: Int, world: MPI_Comm) {
        (self.rank, self.size, self.world) = (rank, size, world)
    }

    /// This process's group, starting MPI on first use (`MPI_Init_thread`, serialized calls from any thread).
    /// Run under `mpirun -np N`; run alone it is a group of one.
    public static func start() throws -> MPIGroup {
        try shared.withLock { group in
            if let group { return group }
            var provided: Int32 = 0
            try check("MPI_Init_thread", MPI_Init_thread(nil, nil, rk_mpi_thread_serialized(), &provided))
            guard provided >= rk_mpi_thread_serialized() else {
                throw MPIError(
                    call: "MPI_Init_thread", code: 0,
                    detail: "this MPI offers thread level \(provided); Reins needs MPI_THREAD_SERIALIZED")
            }
            guard let world = rk_mpi_comm_world() else {
                throw MPIError(call: "MPI_COMM_WORLD", code: 0, detail: "this MPI has no world communicator")
            }
            try check("MPI_Comm_set_errhandler", MPI_Comm_set_errhandler(world, rk_mpi_errors_return()))
            var rank: Int32 = 0, size: Int32 = 0
            try check("MPI_Comm_rank", MPI_Comm_rank(world, &rank))
            try check("MPI_Comm_size", MPI_Comm_size(world, &size))
            let made = MPIGroup(rank: Int(rank), size: Int(size), world: world)
            group = made
            return made
        }
    }

    static func check(_ call: String, _ code: Int32) throws {
        guard code != 0 else { return }  // MPI_SUCCESS
        var text = [CChar](repeating: 0, count: Int(rk_mpi_max_error_string()) + 1)
        var length: Int32 = 0
        _ = MPI_Error_string(code, &text, &length)
        let bytes = text.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }
        throw MPIError(call: call, code: code, detail: String(decoding: bytes, as: UTF8.self))
    }

    public func startSum(_ values: UnsafeMutablePointer<Float>, count: Int) throws {
        guard count <= Int(Int32.max) else {
            throw MPIError(call: "MPI_Allreduce", code: 0, detail: "\(count) floats do not fit an MPI count")
        }
        // A blocking all-reduce, issued the moment the reducer hands the gradient over (during backward): measured on
        // 2 processes sharing a 2-core machine, for full fine-tuning's 90 MB per update, MPI_Iallreduce advanced only
        // inside MPI calls (~90 ms per update against ~25 ms blocking), and a communication thread running blocking
        // all-reduces beside backward took a core from the compute threads while it waited (+40 to 85 ms per update).
        try Self.check(
            "MPI_Allreduce",
            mpi.withLock { _ in
                MPI_Allreduce(rk_mpi_in_place(), values, Int32(count), rk_mpi_float(), rk_mpi_sum(), world)
            })
    }

    /// Nothing to wait for: each sum is complete when ``startSum(_:count:)`` returns.
    public func finishSums() throws {}

    public func gather(_ values: [Double]) throws -> [[Double]] {
        guard values.count <= Int(Int32.max) else {
            throw MPIError(call: "MPI_Allgatherv", code: 0, detail: "\(values.count) numbers do not fit an MPI count")
        }
        var mine = Int32(values.count)
        var counts = [Int32](repeating: 0, count: size)
        try Self.check(
            "MPI_Allgather",
            mpi.withLock { _ in MPI_Allgather(&mine, 1, rk_mpi_int(), &counts, 1, rk_mpi_int(), world) })
        var offsets = [Int32](repeating: 0, count: size)
        var total = 0
        for r in 0..<size {
            guard counts[r] >= 0, total + Int(counts[r]) <= Int(Int32.max) else {
                throw MPIError(call: "MPI_Allgather", code: 0, detail: "the ranks' counts \(counts) do not add up")
            }
            offsets[r] = Int32(total)
            total += Int(counts[r])
        }
        var all = [Double](repeating: 0, count: total)
        var send = values
        try Self.check(
            "MPI_Allgatherv",
            mpi.withLock { _ in
                MPI_Allgatherv(&send, mine, rk_mpi_double(), &all, &counts, &offsets, rk_mpi_double(), world)
            })
        return (0..<size).map { r in Array(all[Int(offsets[r])..<(Int(offsets[r]) + Int(counts[r]))]) }
    }

    /// Ends every process of the job: prints `message` (naming this rank) on standard error and calls `MPI_Abort`.
    public func abort(_ message: String, code: Int32 = 1) -> Never {
        FileHandle.standardError.write(Data("rank \(rank) of \(size): \(message)\n".utf8))
        _ = MPI_Abort(world, code)
        exit(code)
    }

    /// Shuts MPI down (`MPI_Finalize`): the last MPI call of the process.
    public func finish() throws {
        try Self.check("MPI_Finalize", mpi.withLock { _ in MPI_Finalize() })
    }
}


