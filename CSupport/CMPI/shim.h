// MPI for Swift: the C API of the system's MPI (found with pkg-config as `ompi`, Open MPI's name), and its handles
// that are macros Swift cannot import, as functions.
#ifndef REINS_CMPI_SHIM_H
#define REINS_CMPI_SHIM_H
#include <mpi.h>

static inline MPI_Comm rk_mpi_comm_world(void) { return MPI_COMM_WORLD; }
static inline MPI_Datatype rk_mpi_float(void) { return MPI_FLOAT; }
static inline MPI_Datatype rk_mpi_double(void) { return MPI_DOUBLE; }
static inline MPI_Datatype rk_mpi_int(void) { return MPI_INT; }
static inline MPI_Op rk_mpi_sum(void) { return MPI_SUM; }
static inline void *rk_mpi_in_place(void) { return MPI_IN_PLACE; }
static inline MPI_Errhandler rk_mpi_errors_return(void) { return MPI_ERRORS_RETURN; }
static inline MPI_Status *rk_mpi_statuses_ignore(void) { return MPI_STATUSES_IGNORE; }
static inline int rk_mpi_thread_serialized(void) { return MPI_THREAD_SERIALIZED; }
static inline int rk_mpi_max_error_string(void) { return MPI_MAX_ERROR_STRING; }
#endif
