# cython: language_level=3
# Runs of zero bytes shared between their users.
#
# qcow2 allocation zeroes whole clusters (handle_alloc_space's write_zeroes: 64 KiB per new
# cluster by default), and the Python engine makes each run of zeros it needs anew: the plan's
# pending copy (Qcow2Engine.io), the file driver's new content and, past the end of the image,
# the old content it reads (HostFile.pread).  bytes are immutable, so one object per length
# serves them all: `vb_zeros(n)` is bytes(n) (equal value, a new reference) from a small
# cache of recent lengths up to 4 MiB.  Each module that cimports this has its own cache.

cdef extern from *:
    """
    #define VB_ZC_N 8
    #define VB_ZC_MAX (4 << 20)
    static PyObject* vb_zc_obj[VB_ZC_N];
    static Py_ssize_t vb_zc_len[VB_ZC_N];
    static int vb_zc_next = 0;
    static PyObject* vb_zeros(Py_ssize_t n) {
        int i;
        PyObject* b;
        if (n < 0) { PyErr_SetString(PyExc_ValueError, "negative count"); return NULL; }
        if (n > 0 && n <= VB_ZC_MAX)
            for (i = 0; i < VB_ZC_N; i++)
                if (vb_zc_obj[i] != NULL && vb_zc_len[i] == n) { Py_INCREF(vb_zc_obj[i]); return vb_zc_obj[i]; }
        b = PyBytes_FromStringAndSize(NULL, n);
        if (b == NULL || n == 0) return b;
        memset(PyBytes_AS_STRING(b), 0, (size_t)n);
        if (n <= VB_ZC_MAX) {
            i = vb_zc_next;
            vb_zc_next = (i + 1) % VB_ZC_N;
            Py_XDECREF(vb_zc_obj[i]);
            Py_INCREF(b);
            vb_zc_obj[i] = b;
            vb_zc_len[i] = n;
        }
        return b;
    }
    """
    bytes vb_zeros(Py_ssize_t n)
