# CPython 3.11's compact dict table, as Include/internal/pycore_dict.h lays it out
# (_dictkeysobject and PyDictUnicodeEntry), for the bulk modules that read a str-keyed dict's
# entries or put values in place in a template's copy.  Declared only on 3.11 (each user
# checks PY_VERSION_HEX the same way and takes the C API path elsewhere).
cdef extern from *:
    """
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
