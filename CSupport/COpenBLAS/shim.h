// Why this shim exists: Swift imports C through a module map, and OpenBLAS ships its cblas.h (with the
// openblas_* thread controls) in an architecture-specific folder that pkg-config names. This header pulls in
// that cblas.h and the reference LAPACKE interface so that Swift sees one module, COpenBLAS.
#ifndef REINS_COPENBLAS_SHIM_H
#define REINS_COPENBLAS_SHIM_H
#include <cblas.h>
#include <lapacke.h>
#endif
