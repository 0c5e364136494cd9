# CPython 3.11's compact dict table, as Include/internal/pycore_dict.h lays it out
# (_dictkeysobject and PyDictUnicodeEntry), for the bulk modules that read a str-keyed dict's
# entries or put values in place in a template's copy.  Declared only on 3.11 (each user
# checks PY_VERSION_HEX the same way and takes the C API path elsewhere).
from cpython.object cimport PyObject

cdef extern from *:
    """
    #ifndef VB_MAY_BE_TRACKED
    /* v may be tracked by the cyclic GC: a dict holding it must be (MAINTAIN_TRACKING) */
    #define VB_MAY_BE_TRACKED(v) \
        (PyObject_IS_GC(v) && (!PyTuple_CheckExact(v) || PyObject_GC_IsTracked(v)))
    #endif
    #if PY_VERSION_HEX >= 0x030B0000 && PY_VERSION_HEX < 0x030C0000
    #ifndef VB_PYDICT311
    #define VB_PYDICT311 1
    typedef struct {                    /* _dictkeysobject */
        Py_ssize_t dk_refcnt;
        uint8_t dk_log2_size;
        uint8_t dk_log2_index_bytes;
        uint8_t dk_kind;
        uint32_t dk_version;
        Py_ssize_t dk_usable;
        Py_ssize_t dk_nentries;
        char dk_indices[];
    } vb_dictkeys;
    typedef struct { PyObject *me_key; PyObject *me_value; } vb_uentry;   /* PyDictUnicodeEntry */
    /* the entries after the index table */
    #define VB_UENTRIES(dk) ((vb_uentry *)(&((int8_t *)((dk)->dk_indices))[(size_t)1 << (dk)->dk_log2_index_bytes]))
    #endif
    #endif
    """


# A dict just copied from a template (PyDict_Copy: a fresh table no other dict shares, the
# template's keys in its order, a version tag no one has seen) gets n of its values put in
# place: entry idx[i] (entry i when idx is NULL) must hold key keys[i] and a value, in a
# str-keys table or the general one (_PyDict_NewPresized makes that).  Checked at every use;
# -1 (nothing changed) when anything differs, or off 3.11: the caller stores them by
# PyDict_SetItem.  The same dict either way.
cdef extern from *:
    """
    #ifndef VB_FILL_VALUES
    #define VB_FILL_VALUES 1
    #if PY_VERSION_HEX >= 0x030B0000 && PY_VERSION_HEX < 0x030C0000
    typedef struct { Py_hash_t me_hash; PyObject *me_key; PyObject *me_value; } vb_gentry;
    static PyObject **vb_value_slot(vb_dictkeys *dk, Py_ssize_t j) {
        if (dk->dk_kind == 1)                       /* DICT_KEYS_UNICODE: PyDictUnicodeEntry */
            return &(VB_UENTRIES(dk) + j)->me_value;
        return &(((vb_gentry *)VB_UENTRIES(dk)) + j)->me_value;     /* DICT_KEYS_GENERAL */
    }
    static PyObject *vb_key_at(vb_dictkeys *dk, Py_ssize_t j) {
        if (dk->dk_kind == 1)
            return (VB_UENTRIES(dk) + j)->me_key;
        return (((vb_gentry *)VB_UENTRIES(dk)) + j)->me_key;
    }
    static int vb_fill_values(PyObject *d, const int *idx, PyObject **keys, PyObject **vals,
                              Py_ssize_t n) {
        PyDictObject *mp = (PyDictObject *)d;
        vb_dictkeys *dk;
        Py_ssize_t i, j;
        PyObject **v, *old;
        if (!PyDict_CheckExact(d) || mp->ma_values != NULL)
            return -1;
        dk = (vb_dictkeys *)mp->ma_keys;
        if (dk->dk_refcnt != 1 || (dk->dk_kind != 0 && dk->dk_kind != 1))
            return -1;
        for (i = 0; i < n; i++) {
            j = idx ? idx[i] : i;
            if (j < 0 || j >= dk->dk_nentries || vb_key_at(dk, j) != keys[i]
                    || *vb_value_slot(dk, j) == NULL)
                return -1;
        }
        for (i = 0; i < n; i++) {
            v = vb_value_slot(dk, idx ? idx[i] : i);
            old = *v;
            Py_INCREF(vals[i]);
            *v = vals[i];
            Py_DECREF(old);
            /* MAINTAIN_TRACKING, as PyDict_SetItem does: a copy of an all-atomic template
               is untracked until it holds a container */
            if (!PyObject_GC_IsTracked(d) && VB_MAY_BE_TRACKED(vals[i]))
                PyObject_GC_Track(d);
        }
        return 0;
    }
    #else
    static int vb_fill_values(PyObject *d, const int *idx, PyObject **keys, PyObject **vals,
                              Py_ssize_t n) {
        return -1;
    }
    #endif
    #endif
    """
    int vb_fill_values(object d, const int* idx, PyObject** keys, PyObject** vals,
                       Py_ssize_t n) noexcept
