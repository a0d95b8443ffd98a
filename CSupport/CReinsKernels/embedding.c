// embedding.c — table lookup and its scatter-add backward. Ids are checked once, in the forward, so that a bad
// token id is a returned status (the caller throws) and never a read outside the table.
#include "rk_internal.h"
#include <string.h>

static int check_ids(const int32_t *ids, int N, int V, int *bad_row) {
    for (int i = 0; i < N; i++)
        if (ids[i] < 0 || ids[i] >= V) {
            if (bad_row) *bad_row = i;
            return RK_ERR_INDEX;
        }
    return RK_OK;
}
// ids (N), table (V,C), out (N,C)
int rk_embedding_forward(float *out, const int32_t *ids, const float *table, int N, int V, int C, int *bad_row) {
    if (check_ids(ids, N, V, bad_row) != RK_OK) return RK_ERR_INDEX;
    for (int i = 0; i < N; i++) memcpy(out + RK_IDX(i, 0, C), table + RK_IDX(ids[i], 0, C), sizeof(float) * (size_t)C);
    return RK_OK;
}
void rk_embedding_backward(float *dtable, const float *dout, const int32_t *ids, int N, int V, int C, int padding_index) {
    (void)V;
    if (!dtable) return;
    for (int i = 0; i < N; i++) {
        if (ids[i] == padding_index) continue;
        float *d = dtable + RK_IDX(ids[i], 0, C);
        const float *g = dout + RK_IDX(i, 0, C);
#pragma clang loop vectorize(enable)
        for (int j = 0; j < C; j++) d[j] += g[j];
    }
}
int rk_embedding_forward_ref(float *out, const int32_t *ids, const float *table, int N, int V, int C, int *bad_row) {
    if (check_ids(ids, N, V, bad_row) != RK_OK) return RK_ERR_INDEX;
    for (int i = 0; i < N; i++)
        for (int j = 0; j < C; j++) out[RK_IDX(i, j, C)] = table[RK_IDX(ids[i], j, C)];
    return RK_OK;
}
void rk_embedding_backward_ref(float *dtable, const float *dout, const int32_t *ids, int N, int V, int C,
                               int padding_index) {
    (void)V;
    for (int i = 0; i < N; i++)
        for (int j = 0; j < C; j++)
            if (ids[i] != padding_index) dtable[RK_IDX(ids[i], j, C)] += dout[RK_IDX(i, j, C)];
}
