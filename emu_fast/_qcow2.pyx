# cython: language_level=3, binding=True
"""The qcow2 format driver's mapping and allocation compiled: the `qcow2.compute` step
(emu/block/qcow2/driver.py compute/_compute and the write and read phases) and the engine
functions it runs (emu/block/qcow2/engine.py: the L2 lookup, handle_copied/handle_alloc,
calculate_l2_meta, cluster allocation and refcount updates, the L2 link, the overlap check,
the planned-I/O view of the file) and the cache's hit path (cache.py).

Line-for-line translations of the Python functions named in each docstring, over the
engine's own objects: the L2 slices and refcount blocks are the caches' bytearrays, read and
written in place through their buffers.  Rare branches (a cache miss, a missing refcount
block or L2 table, a corruption, 64-bit refcounts, an out-of-range entry) run the Python
code itself, decided before anything has changed, so every Step record and all state are the
Python engine's.

The bulk core (emu_fast/_bulk_blk.pyx) runs the read and write phases through bulk_compute:
the same functions with no detail text and no Machine.set_function (the function it would name
goes to co["caller"]), and the two common write steps natively (_fast_alloc: new clusters in a
cached L2 slice from one cached refcount block with zero COW areas; _fast_in_place: COPIED
clusters), else these compiled functions.  Those steps make the plan items, pieces and metas
from dict templates (their keys in the Python engine's order; on CPython 3.11 a template's copy
takes its values in place), write their text in C, read each field once, and skip stores of
the object a field already holds.  The engine's and caches' fields are read from their
instance dicts (_ga/_sa), the engine's constant geometry once per engine (_geo).  On CPython
3.11 a read at a fixed key (VBQ_H: a request's co, a piece, a meta; VBQ_GA: an instance's
__dict__) first looks at the entry index where that call site found the key last time, and
takes it when that entry holds the key itself with a value (else the dict's own lookup); the
read phase makes its plan items from templates too.  During a quiet step (bulk_compute) a store
of a key the dict holds (VBQ_HS) puts the value in that entry as insertdict does, with one new
version tag per step (vbq_hset); a template's dict is a new dict given a copy of the template's
keys table with the values in its entries (vbq_tpl_new).

While the fast engine runs a qcow2 request, the image's Qcow2Engine is given the class
FastQcow2Engine (this module), whose hot methods are these compiled functions, so Python code
that calls them (the flush, discard, write-zeroes and close phases, the plan's I/O steps) uses
them too.  It pickles and copies as a plain Qcow2Engine; emu_fast.detach puts the plain class
back.
"""
from cpython.bytearray cimport PyByteArray_AS_STRING, PyByteArray_GET_SIZE
from cpython.object cimport PyObject
from cpython.list cimport PyList_GET_SIZE
from cpython.exc cimport PyErr_Occurred
from cpython.pycapsule cimport PyCapsule_New
from libc.string cimport memcpy

cdef extern from "Python.h":
    bint PyUnicode_IS_ASCII(object o)
    Py_ssize_t PyUnicode_GET_LENGTH(object o)
    void* PyUnicode_DATA(object o)
from libc.stdint cimport uint8_t, uint64_t

import copyreg as _copyreg
import errno as _E

from emu.block.qcow2 import driver as _Q
from emu.block.qcow2 import engine as _QE
from emu.block.qcow2 import layout as _L
from emu.block.qcow2 import cache as _QC

from emu_fast import _support as _SUP
from emu_fast._core cimport sched_cont, sched_post
from emu_fast._fmt cimport _hex, _hexll, _ascii, _ll
from emu_fast._zeros cimport vb_zeros
from emu_fast._slots cimport slot_offsets, sget

PYX_SHA256 = PYX_HASH                   # the hash of this file when it was compiled (setup.py)

cdef extern from "Python.h":
    PyObject** _PyObject_GetDictPtr(object o)
    PyObject* _PyType_Lookup(object t, object name)
    PyObject* PyDict_GetItemWithError(object d, object k) except? NULL
    int PyDict_SetItem(object d, object k, object v) except -1
    dict _PyDict_NewPresized(Py_ssize_t minused)


cdef inline object _ga(object o, str name):
    """getattr(o, name) of an instance attribute (read from o.__dict__: the engine's and the
    caches' fields, which no class attribute of theirs overrides; else getattr)"""
    cdef PyObject** dp = _PyObject_GetDictPtr(o)
    cdef PyObject* v
    if dp != NULL and dp[0] != NULL:
        v = PyDict_GetItemWithError(<object>dp[0], name)
        if v != NULL:
            return <object>v
    return getattr(o, name)


cdef inline int _sa(object o, str name, object v) except -1:
    """setattr(o, name, v) of such an instance attribute (into o.__dict__)"""
    cdef PyObject** dp = _PyObject_GetDictPtr(o)
    if dp != NULL and dp[0] != NULL:
        return PyDict_SetItem(<object>dp[0], name, v)
    setattr(o, name, v)
    return 0


# == the quiet path's objects, made cheaply ==========================================================
# The bulk core's compute steps make the Python engine's dicts (plan items, pieces, metas) with
# the same keys in the same order and the same values; these helpers make them without a hash
# lookup per key, read an object's fields from its __dict__ once, and write its strings in C.

cdef extern from *:
    """
    #if PY_VERSION_HEX >= 0x030B0000 && PY_VERSION_HEX < 0x030C0000 && !defined(Py_LIMITED_API) && !defined(PYPY_VERSION)
    #ifndef Py_BUILD_CORE
    #define Py_BUILD_CORE 1
    #define VBQ_UNDEF_BUILD_CORE 1
    #endif
    #include "internal/pycore_dict.h"
    #include "internal/pycore_gc.h"
    #ifdef VBQ_UNDEF_BUILD_CORE
    #undef Py_BUILD_CORE
    #undef VBQ_UNDEF_BUILD_CORE
    #endif
    /* d (a fresh copy of a template dict literal: a combined table of n str keys, entries in
       insertion order) takes vals[0..n) as its values, in that order; 0: d is not such a table
       (nothing changed: the caller stores them one by one) */
    static int vbq_fill(PyObject *d, PyObject *const *vals, Py_ssize_t n) {
        PyDictObject *mp = (PyDictObject *)d;
        PyDictKeysObject *k = mp->ma_keys;
        PyDictUnicodeEntry *ep;
        PyObject *old;
        Py_ssize_t i;
        if (mp->ma_values != NULL || !DK_IS_UNICODE(k) || k->dk_nentries != n || mp->ma_used != n)
            return 0;
        ep = DK_UNICODE_ENTRIES(k);
        for (i = 0; i < n; i++) {
            old = ep[i].me_value;
            Py_INCREF(vals[i]);
            ep[i].me_value = vals[i];
            Py_XDECREF(old);
        }
        if (!PyObject_GC_IsTracked(d))
            PyObject_GC_Track(d);       /* (its values may be containers) */
        return 1;
    }
    /* The bytes of a keys table (dictobject.c _PyDict_KeysSize, which is not exported) */
    static size_t vbq_keys_size(PyDictKeysObject *k) {
        return sizeof(PyDictKeysObject) + ((size_t)1 << k->dk_log2_index_bytes)
            + ((((size_t)1 << k->dk_log2_size) << 1) / 3)
              * (k->dk_kind == DICT_KEYS_GENERAL ? sizeof(PyDictKeyEntry) : sizeof(PyDictUnicodeEntry));
    }
    /* A new dict of tpl's n str keys (a combined table of exactly them, entries in order) with
       the values vals[0..n), as PyDict_Copy(tpl) then vbq_fill make it but without the
       template's values: a new empty dict (PyDict_New: its version tag) takes a copy of tpl's
       keys table (clone_combined_dict_keys: the same bytes, the keys referred to once more)
       with vals in its entries; tracked by the garbage collector when a value may be
       (MAINTAIN_TRACKING, as the dict literal is).  None (a new reference): tpl is not such a
       table (the caller makes it the other way); NULL: an error. */
    static PyObject *vbq_tpl_new(PyObject *tpl, PyObject *const *vals, Py_ssize_t n) {
        PyDictObject *mp = (PyDictObject *)tpl, *d;
        PyDictKeysObject *k = mp->ma_keys, *nk;
        PyDictUnicodeEntry *ep;
        size_t size;
        Py_ssize_t i;
        int track = 0;
    #ifdef Py_REF_DEBUG
        Py_RETURN_NONE;                 /* (_Py_RefTotal counts keys tables too) */
    #endif
        if (!PyDict_CheckExact(tpl) || mp->ma_values != NULL || k->dk_kind != DICT_KEYS_UNICODE
                || k->dk_refcnt != 1 || k->dk_nentries != n || mp->ma_used != n)
            Py_RETURN_NONE;
        d = (PyDictObject *)PyDict_New();
        if (d == NULL)
            return NULL;
        size = vbq_keys_size(k);
        nk = (PyDictKeysObject *)PyObject_Malloc(size);
        if (nk == NULL) {
            Py_DECREF(d);
            return PyErr_NoMemory();
        }
        memcpy(nk, k, size);
        nk->dk_refcnt = 1;
        ep = DK_UNICODE_ENTRIES(nk);
        for (i = 0; i < n; i++) {
            Py_INCREF(ep[i].me_key);
            Py_INCREF(vals[i]);
            ep[i].me_value = vals[i];
            if (!track && PyType_IS_GC(Py_TYPE(vals[i])) && _PyObject_GC_MAY_BE_TRACKED(vals[i]))
                track = 1;
        }
        d->ma_keys->dk_refcnt--;        /* (PyDict_New's shared empty table: dictkeys_decref,
                                           which never frees that one) */
        d->ma_keys = nk;
        d->ma_used = n;
        if (track)
            PyObject_GC_Track((PyObject *)d);
        return (PyObject *)d;
    }
    /* tpl's keys table is as large as vbq_keys_size says (dict.__sizeof__ counts it) */
    static int vbq_tpl_size_ok(PyObject *tpl, Py_ssize_t sizeof_) {
        PyDictKeysObject *k = ((PyDictObject *)tpl)->ma_keys;
        return (Py_ssize_t)(sizeof(PyDictObject) + vbq_keys_size(k)) == sizeof_;
    }
    /* d[key] (borrowed; NULL: absent, or an error is set) for an exact str key, its entry
       first looked for at *hint, the index in d's keys table where this call site found key
       last time (checked: the entry there is key itself, with a value); else the dict's own
       lookup, and the index of key's entry becomes *hint.  (Tables of str keys, split or
       combined, and general ones: a dict made presized, _PyDict_NewPresized, has one.) */
    static Py_ssize_t vbq_hint_misses = 0;
    /* *hint = the index of key's entry in d's keys table (the key object itself; the last
       entry looked at first: a key just added), when it is there */
    static void vbq_learn_hint(PyObject *d, PyObject *key, Py_ssize_t *hint) {
        PyDictKeysObject *k = ((PyDictObject *)d)->ma_keys;
        Py_ssize_t i, n = k->dk_nentries;
        if (DK_IS_UNICODE(k)) {
            PyDictUnicodeEntry *ep = DK_UNICODE_ENTRIES(k);
            for (i = n - 1; i >= 0; i--)
                if (ep[i].me_key == key) {
                    *hint = i;
                    return;
                }
        } else {
            PyDictKeyEntry *ep = DK_ENTRIES(k);
            for (i = n - 1; i >= 0; i--)
                if (ep[i].me_key == key) {
                    *hint = i;
                    return;
                }
        }
    }
    static PyObject *vbq_hget_slow(PyObject *d, PyObject *key, Py_ssize_t *hint) {
        PyObject *v = PyDict_GetItemWithError(d, key);
        if (v == NULL)
            return v;
        vbq_hint_misses++;
        vbq_learn_hint(d, key, hint);
        return v;
    }
    static inline __attribute__((always_inline)) PyObject *vbq_hget(PyObject *d, PyObject *key, Py_ssize_t *hint) {
        PyDictObject *mp = (PyDictObject *)d;
        PyDictKeysObject *k;
        PyObject *v;
        Py_ssize_t i = *hint;
        if (!PyDict_Check(d))
            return NULL;                /* (the caller's fallback raises what d[key] raises) */
        k = mp->ma_keys;
        if ((size_t)i < (size_t)k->dk_nentries) {
            if (DK_IS_UNICODE(k)) {
                PyDictUnicodeEntry *ep = DK_UNICODE_ENTRIES(k) + i;
                if (ep->me_key == key) {
                    v = mp->ma_values != NULL ? mp->ma_values->values[i] : ep->me_value;
                    if (v != NULL)
                        return v;
                }
            } else {
                PyDictKeyEntry *ep = DK_ENTRIES(k) + i;
                if (ep->me_key == key && ep->me_value != NULL)
                    return ep->me_value;
            }
        }
        return vbq_hget_slow(d, key, hint);
    }
    /* The quiet compute step's stores of a field that is there (vbq_hset).  insertdict's
       path for a key that is already in the dict (MAINTAIN_TRACKING, the new value in the
       key's entry or split-table slot, a new version tag when the value is another object,
       the old value's reference dropped), with the version tag drawn once per step: a dict
       made and dropped at the step's first such store takes the next tag of the global
       counter (DICT_NEXT_VERSION, which is not exported), and every dict changed in place
       during the step takes that tag.  Each of them had only older tags before (every earlier
       tag was drawn before), and no one reads a dict's version during a step (the bulk core's
       handlers, which keep values while a dict's tag stays, run between steps), so any reader
       sees a tag that moved whenever a value changed.  Outside a step (vbq_step 0), or when
       the entry at *hint is not key with a value: PyDict_SetItem, and *hint learns where key
       is. */
    static int vbq_step = 0;            /* a quiet compute step runs (bulk_compute) */
    static uint64_t vbq_tag = 0;        /* the step's version tag (0: not drawn yet) */
    static Py_ssize_t vbq_set_misses = 0;
    static Py_ssize_t vbq_set_inplace = 0;
    static int vbq_hset_slow(PyObject *d, PyObject *key, PyObject *v, Py_ssize_t *hint) {
        if (PyDict_SetItem(d, key, v) < 0)
            return -1;
        vbq_set_misses++;
        vbq_learn_hint(d, key, hint);
        return 0;
    }
    static inline __attribute__((always_inline)) int vbq_hset(PyObject *d, PyObject *key, PyObject *v, Py_ssize_t *hint) {
        PyDictObject *mp = (PyDictObject *)d;
        PyDictKeysObject *k;
        PyObject **slot, *old, *t;
        Py_ssize_t i = *hint;
        if (!vbq_step || !PyDict_CheckExact(d))
            return vbq_hset_slow(d, key, v, hint);
        k = mp->ma_keys;
        if ((size_t)i >= (size_t)k->dk_nentries)
            return vbq_hset_slow(d, key, v, hint);
        if (DK_IS_UNICODE(k)) {
            PyDictUnicodeEntry *ep = DK_UNICODE_ENTRIES(k) + i;
            if (ep->me_key != key)
                return vbq_hset_slow(d, key, v, hint);
            slot = mp->ma_values != NULL ? &mp->ma_values->values[i] : &ep->me_value;
        } else {
            PyDictKeyEntry *ep = DK_ENTRIES(k) + i;
            if (ep->me_key != key)
                return vbq_hset_slow(d, key, v, hint);
            slot = &ep->me_value;
        }
        old = *slot;
        if (old == NULL)                /* (a split table's key this dict lacks) */
            return vbq_hset_slow(d, key, v, hint);
        if (vbq_tag == 0 && old != v) {
            t = PyDict_New();
            if (t == NULL)
                return -1;
            vbq_tag = ((PyDictObject *)t)->ma_version_tag;
            Py_DECREF(t);
        }
        if (!_PyObject_GC_IS_TRACKED(d) && _PyObject_GC_MAY_BE_TRACKED(v))
            PyObject_GC_Track(d);       /* (MAINTAIN_TRACKING; the key is a str) */
        vbq_set_inplace++;
        if (old != v) {
            Py_INCREF(v);
            *slot = v;
            mp->ma_version_tag = vbq_tag;
            Py_DECREF(old);
        }
        return 0;
    }
    #else
    static int vbq_fill(PyObject *d, PyObject *const *vals, Py_ssize_t n) {
        (void)d; (void)vals; (void)n;
        return 0;
    }
    static PyObject *vbq_tpl_new(PyObject *tpl, PyObject *const *vals, Py_ssize_t n) {
        (void)tpl; (void)vals; (void)n;
        Py_RETURN_NONE;
    }
    static int vbq_tpl_size_ok(PyObject *tpl, Py_ssize_t sizeof_) {
        (void)tpl; (void)sizeof_;
        return 0;
    }
    static Py_ssize_t vbq_hint_misses = 0;
    static PyObject *vbq_hget(PyObject *d, PyObject *key, Py_ssize_t *hint) {
        (void)hint;
        return PyDict_Check(d) ? PyDict_GetItemWithError(d, key) : NULL;
    }
    static int vbq_step = 0;
    static uint64_t vbq_tag = 0;
    static Py_ssize_t vbq_set_misses = 0;
    static Py_ssize_t vbq_set_inplace = 0;
    static int vbq_hset(PyObject *d, PyObject *key, PyObject *v, Py_ssize_t *hint) {
        (void)hint;
        return PyDict_SetItem(d, key, v);
    }
    #endif
    /* d[key] = v (d: a dict) through vbq_hset with a hint of this call site's own */
    #define VBQ_HS(d, key, v) __extension__ ({ static Py_ssize_t vbq_hs_ = 0; vbq_hset((PyObject *)(d), (PyObject *)(key), (PyObject *)(v), &vbq_hs_); })
    /* a quiet compute step begins (1) or ends (0): no version tag drawn yet (see vbq_hset) */
    static int vbq_step_set(int on) {
        int was = vbq_step;
        vbq_step = on;
        vbq_tag = 0;
        return was;
    }
    /* vbq_hget with a hint of this call site's own (d: an exact dict or a subclass) */
    #define VBQ_H(d, key) __extension__ ({ static Py_ssize_t vbq_h_ = 0; vbq_hget((PyObject *)(d), (PyObject *)(key), &vbq_h_); })
    /* VBQ_H on o.__dict__ (NULL: o has none, or key is absent from it) */
    #define VBQ_GA(o, key) __extension__ ({ PyObject **vbq_dp_ = _PyObject_GetDictPtr((PyObject *)(o)); \
        (vbq_dp_ != NULL && *vbq_dp_ != NULL) ? VBQ_H(*vbq_dp_, key) : (PyObject *)NULL; })
    static int vbq_err(void) { return -1; }
    /* v (d[key], borrowed: no reference taken) is an empty list that nothing else refers to
       (replacing it by a new empty list changes nothing anyone can see) */
    static int vbq_lone_empty(PyObject *v) {
        return v != NULL && PyList_CheckExact(v) && PyList_GET_SIZE(v) == 0 && Py_REFCNT(v) == 1;
    }
    #define vbq_lone_empty_list(d, key) vbq_lone_empty(VBQ_H(d, key))
    /* a == b for a str b: -1 when a is not an exact str (the caller compares in Python) */
    static int vbq_str_eq(PyObject *a, PyObject *b) {
        Py_ssize_t n;
        if (a == b)
            return 1;
        if (!PyUnicode_CheckExact(a))
            return -1;
        n = PyUnicode_GET_LENGTH(a);
        if (n != PyUnicode_GET_LENGTH(b) || PyUnicode_KIND(a) != PyUnicode_KIND(b))
            return 0;
        return memcmp(PyUnicode_DATA(a), PyUnicode_DATA(b), (size_t)n * PyUnicode_KIND(a)) == 0;
    }
    /* d[key] is v itself */
    #define vbq_is(d, key, v) (VBQ_H(d, key) == (PyObject *)(v))
    """
    int vbq_fill(object d, PyObject** vals, Py_ssize_t n) except -1
    object vbq_tpl_new(dict tpl, PyObject** vals, Py_ssize_t n)
    int vbq_tpl_size_ok(dict tpl, Py_ssize_t sizeof_) noexcept
    int vbq_lone_empty_list(object d, object key) except -1
    int vbq_is(object d, object key, object v) except -1
    int vbq_str_eq(object a, object b) noexcept
    PyObject* VBQ_H(object d, object key)
    PyObject* VBQ_GA(object o, object key)
    Py_ssize_t vbq_hint_misses
    int vbq_err() except -1
    int VBQ_HS(object d, object key, object v) except -1
    int vbq_step_set(int on) noexcept
    Py_ssize_t vbq_set_misses
    Py_ssize_t vbq_set_inplace

cdef extern from "Python.h":
    dict PyDict_Copy(object d)


cdef object PY_FALSE = False      # (the object: <PyObject*>False would be a C 0)


cdef bint _TPL_NEW = False        # vbq_tpl_new makes the templates' dicts (set below)


cdef dict _from_tpl(dict tpl, PyObject** vals, Py_ssize_t n):
    """{k0: vals[0], k1: vals[1], ...}: the dict literal of tpl's n keys (in its order)"""
    cdef dict d
    cdef Py_ssize_t i = 0
    if _TPL_NEW:
        o = vbq_tpl_new(tpl, vals, n)
        if o is not None:
            return <dict>o
    d = PyDict_Copy(tpl)
    if not vbq_fill(d, vals, n):
        for k in tpl:
            d[k] = <object>vals[i]
            i += 1
    return d


def dict_templates(vals=("a", 1, [2], None, (3,), b"4", 5.0, {}), bint native=False):
    """(the dicts _from_tpl makes from each template with the values vals, and the dict
    literals of the same keys) -- or, native: whether this build makes them natively
    (vbq_tpl_new, CPython 3.11) rather than as copies filled key by key (for the tests)"""
    cdef PyObject* v[8]
    cdef Py_ssize_t i
    for i in range(8):
        v[i] = <PyObject*>vals[i]
    if native:
        return _TPL_NEW
    made = [_from_tpl(t, v, len(t)) for t in (TPL_META, TPL_PIECE, TPL_ZERO, TPL_GWRITE)]
    return made, [dict(zip(t, vals)) for t in (TPL_META, TPL_PIECE, TPL_ZERO, TPL_GWRITE)]


# the Python engine's dicts of the quiet path, their keys in its order
cdef dict TPL_META = {"offset": None, "alloc_offset": None, "nb_clusters": None, "keep_old": None,
                      "cow_start": None, "cow_end": None, "skip_cow": None}    # calculate_l2_meta
cdef dict TPL_PIECE = {"guest": None, "host": None, "bytes": None, "qoff": None, "metas": None,
                       "failed": None}                                         # _write_machine
cdef dict TPL_ZERO = {"op": None, "fn": None, "what": None, "offset": None, "length": None,
                      "kind": None}                             # io("write_zeroes", ..., kind=)
cdef dict TPL_GWRITE = {"op": None, "fn": None, "what": None, "offset": None, "length": None,
                        "parts": None, "kind": None, "piece": None}   # io("guest_write", ...)


cdef inline dict _idict(object o):
    """o.__dict__ (None: o has none)"""
    cdef PyObject** dp = _PyObject_GetDictPtr(o)
    if dp != NULL and dp[0] != NULL:
        return <dict>dp[0]
    return None


cdef inline object _fa(dict d, str name, object o):
    """_ga(o, name) with o's __dict__ d at hand"""
    cdef PyObject* v = PyDict_GetItemWithError(d, name)
    if v != NULL:
        return <object>v
    return getattr(o, name)


cdef inline object _hv(PyObject* v, object o, str name):
    """_fa's value from VBQ_H(o's __dict__, name) (v; NULL: absent there, getattr(o, name))"""
    if v != NULL:
        return <object>v
    if PyErr_Occurred():
        vbq_err()
    return getattr(o, name)


cdef inline object _hk(PyObject* v, dict d, str key):
    """d[key] from VBQ_H(d, key) (v; NULL: absent, d[key] raises the KeyError)"""
    if v != NULL:
        return <object>v
    if PyErr_Occurred():
        vbq_err()
    return d[key]


cdef inline object _hn(PyObject* v):
    """d.get(key) from VBQ_H(d, key) (v; NULL: absent, None)"""
    if v != NULL:
        return <object>v
    if PyErr_Occurred():
        vbq_err()
    return None


def hinted_get(d, str key, default=None):
    """d.get(key, default) through one hinted lookup site (vbq_hget), and how many times any
    site missed its hint so far (for the tests)"""
    cdef PyObject* v = VBQ_H(d, key) if type(d) is dict else NULL
    if v == NULL:
        if PyErr_Occurred():
            vbq_err()
        return d.get(key, default), vbq_hint_misses
    return <object>v, vbq_hint_misses


cdef extern from *:
    """
    static const char vbq_xdigits[] = "0123456789abcdef";
    /* "0x%llx" of u at p: its digits counted first, then written from the last one; its length */
    static inline int vbq_phex(char *p, unsigned long long u) {
        int n = u ? (67 - __builtin_clzll(u)) >> 2 : 1, i;
        p[0] = '0';
        p[1] = 'x';
        for (i = n + 1; i >= 2; i--) {
            p[i] = vbq_xdigits[u & 15];
            u >>= 4;
        }
        return n + 2;
    }
    """
    int vbq_phex(char* p, unsigned long long u) noexcept


cdef inline int _pcs(char* p, const char* s, int n) noexcept:
    """the n chars of the C string literal s at p (a memcpy of a constant size); n"""
    memcpy(p, s, n)
    return n


cdef extern from *:
    """
    #if PY_VERSION_HEX >= 0x030B0000 && PY_VERSION_HEX < 0x030C0000
    #define vbq_dict_version(d) ((unsigned long long)((PyDictObject *)(d))->ma_version_tag)
    #else
    #define vbq_dict_version(d) 0ULL
    #endif
    """
    unsigned long long vbq_dict_version(dict d) noexcept


def hinted_sets(list stores, bint step=True):
    """d[key] = v for each (d, key, v) of stores (exact dicts) through one hinted store site
    (vbq_hset), all in one quiet step (step) or outside any; -> the version tag of each d after
    its store, and how many stores any site made in place and through PyDict_SetItem so far
    (for the tests)"""
    cdef int outer = vbq_step_set(1 if step else 0)
    cdef list tags = []
    cdef dict d
    try:
        for d, key, v in stores:
            VBQ_HS(d, <str?>key, v)
            tags.append(vbq_dict_version(d))
    finally:
        vbq_step_set(outer)
    return tags, vbq_set_inplace, vbq_set_misses


def dict_version(dict d):
    """d's version tag (PEP 509; 0 off CPython 3.11) (for the tests)"""
    return vbq_dict_version(d)


cdef inline int _phexll(char* p, long long v) noexcept:
    """format(v, '#x') at p; its length"""
    if v >= 0:
        return vbq_phex(p, <unsigned long long>v)
    p[0] = 45          # '-'
    return 1 + vbq_phex(p + 1, <unsigned long long>0 - <unsigned long long>v)


def hex_text(long long v):
    """format(v, '#x') as _phexll writes it (for the tests)"""
    cdef char buf[24]
    return _ascii(buf, _phexll(buf, v))


cdef str _s_zero_cow(long long off, long long n):
    """f"COW areas read as zero: zero {off:#x}+{n:#x} (fallocate ZERO_RANGE)" (handle_alloc_space)"""
    cdef char buf[128]
    cdef int k = _pcs(buf, "COW areas read as zero: zero ", 29)
    k += _phexll(buf + k, off)
    buf[k] = 43        # '+'
    k += 1
    k += _phexll(buf + k, n)
    k += _pcs(buf + k, " (fallocate ZERO_RANGE)", 23)
    return _ascii(buf, k)


cdef str _s_guest_data(long long n, long long host):
    """f"guest data {n:#x} bytes -> host {host:#x}" (driver._write_task)"""
    cdef char buf[96]
    cdef int k = _pcs(buf, "guest data ", 11)
    k += _phexll(buf + k, n)
    k += _pcs(buf + k, " bytes -> host ", 15)
    k += _phexll(buf + k, host)
    return _ascii(buf, k)


cdef struct Geo:       # the engine's geometry: fields its __init__ sets and nothing changes
    int cluster_bits
    long long cluster_size
    int l2_bits
    long long l2_size
    long long l2_slice_size
    long long l1_size
    int refcount_order
    int refcount_block_bits
    long long refcount_max
    long long size
    long long version

cdef Geo _G
cdef object _G_eng = None       # the engine _G was read from (kept alive: its address stays its own)


cdef Geo* _geo_load(object eng) except NULL:
    """_G read from eng"""
    global _G_eng
    _G_eng = None
    _G.cluster_bits = _hv(VBQ_GA(eng, "cluster_bits"), eng, "cluster_bits")
    _G.cluster_size = _hv(VBQ_GA(eng, "cluster_size"), eng, "cluster_size")
    _G.l2_bits = _hv(VBQ_GA(eng, "l2_bits"), eng, "l2_bits")
    _G.l2_size = _hv(VBQ_GA(eng, "l2_size"), eng, "l2_size")
    _G.l2_slice_size = _hv(VBQ_GA(eng, "l2_slice_size"), eng, "l2_slice_size")
    _G.l1_size = _hv(VBQ_GA(eng, "l1_size"), eng, "l1_size")
    _G.refcount_order = _hv(VBQ_GA(eng, "refcount_order"), eng, "refcount_order")
    _G.refcount_block_bits = _hv(VBQ_GA(eng, "refcount_block_bits"), eng, "refcount_block_bits")
    rm = _hv(VBQ_GA(eng, "refcount_max"), eng, "refcount_max")
    _G.refcount_max = rm if rm < (1 << 62) else (1 << 62)   # (64-bit refcounts: Python paths)
    _G.size = _hv(VBQ_GA(eng, "size"), eng, "size")
    _G.version = _hv(VBQ_GA(eng, "version"), eng, "version")
    _G_eng = eng
    return &_G


cdef inline Geo* _geo(object eng) except NULL:
    """the geometry of eng (read once per compute step, and whenever another engine comes)"""
    if eng is _G_eng:
        return &_G
    return _geo_load(eng)


cdef object Qcow2Engine = _QE.Qcow2Engine
from emu.machine import Machine as _Machine_cls
from emu.block import backend as _BK
cdef object _Machine = _Machine_cls
cdef object _BlockState = _BK.BlockState
# members read at their offsets (emu_fast/_slots.pxd): Machine.block, Machine.fmt; BlockState.reqs
cdef Py_ssize_t _QM[2]
cdef Py_ssize_t _QB[1]
SLOT_PATHS = {"Machine": slot_offsets(_Machine, ("block", "fmt"), _QM),
              "BlockState": slot_offsets(_BlockState, ("reqs",), _QB)}


cdef inline object _m_reqs(object m):
    """m.block.reqs"""
    return sget(sget(m, _Machine, _QM[0], "block"), _BlockState, _QB[0], "reqs")
cdef object Qcow2Error = _QE.Qcow2Error
cdef object _refcount_get_py = _L.refcount_get
cdef object _refcount_set_py = _L.refcount_set
cdef object _cluster_type_py = _L.cluster_type
cdef dict PHASES = _Q.PHASES
cdef object _perform_cow = _Q._perform_cow
cdef object _PY_FINISH = _Q._finish
cdef dict ERRNO_NAMES = _Q.ERRNO_NAMES
cdef str SRC = _Q.SRC
cdef str CLUSTER_SRC = _Q.CLUSTER_SRC
cdef long long INT_MAX = _Q.INT_MAX
cdef long long INV = _QE.INV
cdef long long BDRV_REQUEST_MAX_BYTES = _QE.BDRV_REQUEST_MAX_BYTES
cdef int EAGAIN = _E.EAGAIN
cdef int EINVAL = _E.EINVAL
cdef int EFBIG = _E.EFBIG
cdef int DISCARD_NEVER = _QE.DISCARD_NEVER
cdef long long OL_MAIN_HEADER = _QE.OL_MAIN_HEADER
cdef long long OL_ACTIVE_L1 = _QE.OL_ACTIVE_L1
cdef long long OL_ACTIVE_L2 = _QE.OL_ACTIVE_L2
cdef long long OL_REFCOUNT_TABLE = _QE.OL_REFCOUNT_TABLE
cdef long long OL_REFCOUNT_BLOCK = _QE.OL_REFCOUNT_BLOCK
cdef long long OL_SNAPSHOT_TABLE = _QE.OL_SNAPSHOT_TABLE
cdef long long OL_INACTIVE_L1 = _QE.OL_INACTIVE_L1
cdef dict OL_NAMES = _QE.OL_NAMES
cdef uint64_t QCOW_OFLAG_COPIED = _L.QCOW_OFLAG_COPIED
cdef uint64_t QCOW_OFLAG_COMPRESSED = _L.QCOW_OFLAG_COMPRESSED
cdef uint64_t QCOW_OFLAG_ZERO = _L.QCOW_OFLAG_ZERO
cdef uint64_t L1E_OFFSET_MASK = _L.L1E_OFFSET_MASK
cdef uint64_t L2E_OFFSET_MASK = _L.L2E_OFFSET_MASK
cdef uint64_t REFT_OFFSET_MASK = _L.REFT_OFFSET_MASK
cdef long long INCOMPAT_DIRTY = _L.INCOMPAT_DIRTY
cdef long long QCOW_MAX_CLUSTER_OFFSET = _L.QCOW_MAX_CLUSTER_OFFSET

# cluster types (layout.cluster_type) as small ints; TNAME gives the layout's strings
cdef enum:
    T_UNALLOCATED = 0
    T_ZERO_PLAIN = 1
    T_ZERO_ALLOC = 2
    T_NORMAL = 3
    T_COMPRESSED = 4
    T_PY = 5            # (_gho: the Python method decides)
cdef tuple TNAME = (_L.UNALLOCATED, _L.ZERO_PLAIN, _L.ZERO_ALLOC, _L.NORMAL, _L.COMPRESSED)
cdef object UNALLOCATED = _L.UNALLOCATED
cdef object ZERO_PLAIN = _L.ZERO_PLAIN
cdef object ZERO_ALLOC = _L.ZERO_ALLOC
cdef object COMPRESSED = _L.COMPRESSED


cdef inline int _ctype(uint64_t e) noexcept:
    """layout.cluster_type"""
    if e & QCOW_OFLAG_COMPRESSED:
        return T_COMPRESSED
    if e & QCOW_OFLAG_ZERO:
        return T_ZERO_ALLOC if e & L2E_OFFSET_MASK else T_ZERO_PLAIN
    if not e & L2E_OFFSET_MASK:
        return T_UNALLOCATED
    return T_NORMAL


# == table entries (Qcow2Engine.get_entry / set_entry) ==========================================

cdef uint64_t _get(object table, Py_ssize_t i) except? 0xFFFFFFFFFFFFFFFF:
    """Qcow2Engine.get_entry: the big-endian 64-bit entry i (a short or odd table: Python)"""
    cdef const uint8_t *p
    cdef uint64_t v
    cdef int k
    if type(table) is bytearray and i >= 0 and (i + 1) * 8 <= PyByteArray_GET_SIZE(table):
        p = <const uint8_t *>PyByteArray_AS_STRING(table) + i * 8
        v = 0
        for k in range(8):
            v = (v << 8) | p[k]
        return v
    return int.from_bytes(table[i * 8:i * 8 + 8], "big")


cdef int _set(object table, Py_ssize_t i, uint64_t val) except -1:
    """Qcow2Engine.set_entry"""
    cdef uint8_t *p
    cdef int k
    if type(table) is bytearray and i >= 0 and (i + 1) * 8 <= PyByteArray_GET_SIZE(table):
        p = <uint8_t *>PyByteArray_AS_STRING(table) + i * 8
        for k in range(7, -1, -1):
            p[k] = val & 0xFF
            val >>= 8
        return 0
    table[i * 8:i * 8 + 8] = (<object>val).to_bytes(8, "big")
    return 0


cdef object _refcount_get(object block, long long index, int order):
    """layout.refcount_get (a Python int)"""
    cdef int bits = 1 << order
    cdef int per, n, k
    cdef const uint8_t *p
    cdef uint64_t v
    if type(block) is not bytearray:
        return _refcount_get_py(block, index, order)
    if bits < 8:
        per = 8 // bits
        if index < 0 or index // per >= PyByteArray_GET_SIZE(block):
            return _refcount_get_py(block, index, order)
        p = <const uint8_t *>PyByteArray_AS_STRING(block)
        return (p[index // per] >> ((index % per) * bits)) & ((1 << bits) - 1)
    n = bits // 8
    if index < 0 or (index + 1) * n > PyByteArray_GET_SIZE(block):
        return _refcount_get_py(block, index, order)
    p = <const uint8_t *>PyByteArray_AS_STRING(block) + index * n
    v = 0
    for k in range(n):
        v = (v << 8) | p[k]
    return v


cdef int _refcount_set(object block, long long index, int order, long long value) except -1:
    """layout.refcount_set for orders 0-5 with 0 <= value < 2**bits (the caller checks)"""
    cdef int bits = 1 << order
    cdef int per, n, k, shift
    cdef uint8_t *p
    cdef uint64_t v = <uint64_t>value
    cdef uint8_t mask
    if type(block) is not bytearray or value < 0 or order > 5:
        _refcount_set_py(block, index, order, value)
        return 0
    if bits < 8:
        per = 8 // bits
        if index < 0 or index // per >= PyByteArray_GET_SIZE(block) or value >= (1 << bits):
            _refcount_set_py(block, index, order, value)
            return 0
        shift = (index % per) * bits
        mask = <uint8_t>(((1 << bits) - 1) << shift)
        p = <uint8_t *>PyByteArray_AS_STRING(block) + index // per
        p[0] = <uint8_t>((p[0] & ~mask) | (v << shift))
        return 0
    n = bits // 8
    if index < 0 or (index + 1) * n > PyByteArray_GET_SIZE(block) or value >> bits:
        _refcount_set_py(block, index, order, value)
        return 0
    p = <uint8_t *>PyByteArray_AS_STRING(block) + index * n
    for k in range(n - 1, -1, -1):
        p[k] = v & 0xFF
        v >>= 8
    return 0


# == the caches (cache.py Cache; engine.py cache_get) ===========================================

cdef inline Py_ssize_t _lookup(object c, long long offset) except -2:
    """Cache.lookup's search: the index caching offset, or -1"""
    cdef list offsets = _hv(VBQ_GA(c, "offsets"), c, "offsets")
    cdef Py_ssize_t i
    for i in range(len(offsets)):
        if <long long>offsets[i] == offset:
            return i
    return -1


cdef inline Py_ssize_t _lookup_l(object offsets, long long offset) except -2:
    """Cache.lookup's search in the cache's offsets list: the index caching offset, or -1"""
    cdef Py_ssize_t i
    cdef list lst = offsets
    for i in range(PyList_GET_SIZE(lst)):
        if <long long>lst[i] == offset:
            return i
    return -1


cdef int _lru_bump_d(dict cd, object c, Py_ssize_t i, long long times) except -1:
    """times Cache.put(i) after as many gets, on an entry nobody else holds: the LRU counter
    goes up by times and entry i takes its last value (cd: the cache's __dict__)"""
    cdef long long k
    o = _hv(VBQ_H(cd, "lru_counter"), c, "lru_counter")
    if _ll(o, &k) and 0 <= k < (1LL << 62):
        n = k + times
    else:
        n = o + times
    VBQ_HS(cd, "lru_counter", n)
    (<list>_hv(VBQ_H(cd, "lru"), c, "lru"))[i] = n
    return 0


cdef int _put(object c, Py_ssize_t i) except -1:
    """Cache.put"""
    cdef dict cd = _idict(c)
    if cd is None:
        cd = {}                         # (no __dict__: every field through getattr)
    cdef list ref = _hv(VBQ_H(cd, "ref"), c, "ref")
    cdef long long r = <long long>ref[i] - 1
    ref[i] = r
    if r == 0:
        n = _hv(VBQ_H(cd, "lru_counter"), c, "lru_counter") + 1
        if _idict(c) is None:
            _sa(c, "lru_counter", n)
        else:
            VBQ_HS(cd, "lru_counter", n)
        (<list>_hv(VBQ_H(cd, "lru"), c, "lru"))[i] = n
    return 0


cdef Py_ssize_t _cache_get(object eng, object c, long long offset, bint read=True) except -1:
    """Qcow2Engine.cache_get (a miss: the Python method)"""
    cdef Py_ssize_t i
    if offset % <long long>_hv(VBQ_GA(c, "table_size"), c, "table_size"):
        return Qcow2Engine.cache_get(eng, c, offset, read)
    i = _lookup(c, offset)
    if i < 0:
        return Qcow2Engine.cache_get(eng, c, offset, read)
    cdef list ref = _hv(VBQ_GA(c, "ref"), c, "ref")
    ref[i] = <long long>ref[i] + 1
    return i


cdef int _cache_set_dependency(object eng, object c, object dep) except -1:
    """Qcow2Engine.cache_set_dependency (c.depends = dep.name: no store when it is that object)"""
    cdef dict cd = _idict(c)
    cdef dict dd = _idict(dep)
    if cd is None or dd is None:
        if _hv(VBQ_GA(dep, "depends"), dep, "depends"):
            eng.cache_flush_dependency(dep)
        if _hv(VBQ_GA(c, "depends"), c, "depends") and _hv(VBQ_GA(c, "depends"), c, "depends") != _hv(VBQ_GA(dep, "name"), dep, "name"):
            eng.cache_flush_dependency(c)
        _sa(c, "depends", _hv(VBQ_GA(dep, "name"), dep, "name"))
        return 0
    ddep = _hv(VBQ_H(dd, "depends"), dep, "depends")
    if ddep is not None and ddep:
        eng.cache_flush_dependency(dep)
    cur = _hv(VBQ_H(cd, "depends"), c, "depends")
    name = _hv(VBQ_H(dd, "name"), dep, "name")
    if cur is not name and cur is not None and cur and cur != name:
        eng.cache_flush_dependency(c)
        cur = _MISSING
    if cur is not name:
        VBQ_HS(cd, "depends", name)
    return 0


cdef object _MISSING = object()


# == the view of the file and the plan (Qcow2Engine.pread / io / executed) =========================

cdef bytes _pread(object eng, object offset, object n):
    """Qcow2Engine.pread"""
    buf = bytearray(_hv(VBQ_GA(eng, "pread_file"), eng, "pread_file")(offset, n))
    cdef long long o = offset, nn = n, off, lo, hi, ln
    for pend in _hv(VBQ_GA(eng, "pending"), eng, "pending"):
        off = pend[0]
        data = pend[1]
        ln = len(data)
        lo = off if off > o else o
        hi = off + ln if off + ln < o + nn else o + nn
        if lo < hi:
            buf[lo - o:hi - o] = data[lo - off:hi - off]
    return bytes(buf)


cdef int _grow_file_size(object eng, object end) except -1:
    """eng.file_size = max(eng.file_size, end) (ints: the same object stays when it is not less)"""
    fs = _hv(VBQ_GA(eng, "file_size"), eng, "file_size")
    if type(fs) is int and type(end) is int:
        if end > fs:
            _sa(eng, "file_size", end)
        return 0
    _sa(eng, "file_size", max(fs, end))
    return 0


cdef int _io(object eng, object op, object fn, object what, object offset, object data,
             object length, dict extra) except -1:
    """Qcow2Engine.io"""
    cdef dict item = {"op": op, "fn": fn, "what": what, "offset": offset, "length": length}
    if data is not None:
        b = bytes(data)
        item["data"] = b
        item["length"] = len(b)
        _hv(VBQ_GA(eng, "pending"), eng, "pending").append([offset, bytes(data)])
        _grow_file_size(eng, offset + len(b))
    else:
        _pend(eng, op, offset, length)
    if extra:
        item.update(extra)
    _hv(VBQ_GA(eng, "plan"), eng, "plan").append(item)
    return 0


cdef int _pend(object eng, object op, object offset, object length) except -1:
    """Qcow2Engine.io's view of the file for an item without data"""
    if op == "write_zeroes" or op == "discard":
        _hv(VBQ_GA(eng, "pending"), eng, "pending").append([offset, vb_zeros(length) if type(length) is int and 0 <= length < 1 << 40
                                    else bytes(length)])
        if op == "write_zeroes":
            _grow_file_size(eng, offset + length)     # (a discard leaves file_size as it is)
    elif op == "guest_write":
        _hv(VBQ_GA(eng, "pending"), eng, "pending").append([offset, b""])
        _grow_file_size(eng, offset + length)
    return 0


cdef int _io_kw(object eng, str op, str fn, str what, object offset, object length, str k1, object v1,
                str k2=None, object v2=None, str k3=None, object v3=None) except -1:
    """Qcow2Engine.io without data, its extra fields k1=v1, k2=v2, k3=v3 (in that order)"""
    cdef dict item = _PyDict_NewPresized(8)        # (room for the extras: no resize)
    item["op"] = op
    item["fn"] = fn
    item["what"] = what
    item["offset"] = offset
    item["length"] = length
    _pend(eng, op, offset, length)
    item[k1] = v1
    if k2 is not None:
        item[k2] = v2
    if k3 is not None:
        item[k3] = v3
    _hv(VBQ_GA(eng, "plan"), eng, "plan").append(item)
    return 0


cdef int _executed(object eng, dict item) except -1:
    """Qcow2Engine.executed"""
    if "data" in item:
        _hv(VBQ_GA(eng, "pending"), eng, "pending").pop(0)
        return 0
    op = item["op"]
    if op == "write_zeroes" or op == "discard" or op == "guest_write":
        _hv(VBQ_GA(eng, "pending"), eng, "pending").pop(0)
    return 0


# == overlap checks ====================================================================================

cdef long long _check_metadata_overlap(object eng, long long ign, long long offset,
                                       long long size) except -1:
    """Qcow2Engine.check_metadata_overlap (its fields read from its __dict__ once each)"""
    cdef dict ed = _idict(eng)
    if ed is None:
        ed = {}                         # (no __dict__: every field through getattr)
    return _cmo(ed, eng, ign, offset, size, _MISSING, _MISSING, _MISSING)


cdef long long _cmo(dict ed, object eng, long long ign, long long offset, long long size,
                    object l1t, object rts, object rt) except -1:
    """Qcow2Engine.check_metadata_overlap with its __dict__ ed at hand, and its l1_table,
    refcount_table_size and refcount_table when the caller has read them (else _MISSING)"""
    cdef long long chk = <long long>_hv(VBQ_H(ed, "overlap_check"), eng, "overlap_check") & ~ign
    cdef Geo* g = _geo(eng)
    cdef long long cs = g.cluster_size
    cdef long long o, s, end
    cdef uint64_t e
    cdef Py_ssize_t i, top
    if not size:
        return 0
    if chk & OL_MAIN_HEADER and offset < cs:
        return OL_MAIN_HEADER
    size = ((offset & (cs - 1)) + size + cs - 1) // cs * cs
    offset = offset & ~(cs - 1)
    end = offset + size
    if chk & OL_ACTIVE_L1:
        s = g.l1_size
        if s:
            o = _hv(VBQ_H(ed, "l1_table_offset"), eng, "l1_table_offset")
            if o < end and offset < o + s * 8:
                return OL_ACTIVE_L1
    if chk & OL_REFCOUNT_TABLE:
        s = _hv(VBQ_H(ed, "refcount_table_size"), eng, "refcount_table_size") if rts is _MISSING else rts
        if s:
            o = _hv(VBQ_H(ed, "refcount_table_offset"), eng, "refcount_table_offset")
            if o < end and offset < o + s * 8:
                return OL_REFCOUNT_TABLE
    if chk & OL_SNAPSHOT_TABLE:
        s = _hv(VBQ_H(ed, "snapshots_size"), eng, "snapshots_size")
        if s:
            o = _hv(VBQ_H(ed, "snapshots_offset"), eng, "snapshots_offset")
            if o < end and offset < o + s:
                return OL_SNAPSHOT_TABLE
    if chk & OL_INACTIVE_L1:
        sn = _hv(VBQ_H(ed, "snapshots"), eng, "snapshots")
        if type(sn) is not list or PyList_GET_SIZE(sn):
            for l1_off, l1_sz in sn:
                if l1_sz and l1_off < end and offset < l1_off + l1_sz * 8:
                    return OL_INACTIVE_L1
    if chk & OL_ACTIVE_L2:
        for x in (_hv(VBQ_H(ed, "l1_table"), eng, "l1_table") if l1t is _MISSING else l1t):
            e = x
            e &= L1E_OFFSET_MASK
            if e and <long long>e < end and offset < <long long>e + cs:
                return OL_ACTIVE_L2
    if chk & OL_REFCOUNT_BLOCK:
        if rt is _MISSING:
            rt = _hv(VBQ_H(ed, "refcount_table"), eng, "refcount_table")
        top = _hv(VBQ_H(ed, "max_refcount_table_index"), eng, "max_refcount_table_index")
        for i in range(top + 1):
            e = (<tuple>rt)[i] if isinstance(rt, tuple) else rt[i]
            e &= REFT_OFFSET_MASK
            if e and <long long>e < end and offset < <long long>e + cs:
                return OL_REFCOUNT_BLOCK
    return 0


cdef int _pre_write_overlap_check(object eng, long long ign, long long offset,
                                  long long size) except -1:
    """Qcow2Engine.pre_write_overlap_check"""
    cdef long long hit = _check_metadata_overlap(eng, ign, offset, size)
    if hit:
        eng.signal_corruption(True, "Preventing invalid write on metadata (overlaps with "
                              f"{OL_NAMES[hit]})")
    return 0


# == refcounts ============================================================================================

cdef inline object _reftable(object eng, Py_ssize_t ti):
    """eng.refcount_table[ti]: a FrozenTable (a tuple) is indexed in C, anything else as Python does."""
    rt = _hv(VBQ_GA(eng, "refcount_table"), eng, "refcount_table")
    if isinstance(rt, tuple):
        return (<tuple>rt)[ti]
    return rt[ti]


cdef object _get_refcount(object eng, long long cluster_index):
    """Qcow2Engine.get_refcount (a misaligned refcount block: the Python method)"""
    cdef int rbb = _geo(eng).refcount_block_bits
    cdef long long ti = cluster_index >> rbb
    cdef uint64_t rb
    if ti >= <long long>_hv(VBQ_GA(eng, "refcount_table_size"), eng, "refcount_table_size"):
        return 0
    rb = _reftable(eng, ti)
    rb &= REFT_OFFSET_MASK
    if not rb:
        return 0
    cdef long long cs = _geo(eng).cluster_size
    if rb & <uint64_t>(cs - 1):
        return Qcow2Engine.get_refcount(eng, cluster_index)
    rbc = _hv(VBQ_GA(eng, "rb_cache"), eng, "rb_cache")
    cdef Py_ssize_t i = _cache_get(eng, rbc, <long long>rb, True)
    val = _refcount_get((<list>_hv(VBQ_GA(rbc, "tables"), rbc, "tables"))[i], cluster_index & ((1LL << rbb) - 1),
                        _geo(eng).refcount_order)
    _put(rbc, i)
    return val


cdef int _alloc_refcount_block(object eng, long long cluster_index, Py_ssize_t *ci) except? -99:
    """Qcow2Engine.alloc_refcount_block: an existing block is compiled, a new one is Python"""
    cdef long long ti = cluster_index >> <int>_geo(eng).refcount_block_bits
    cdef uint64_t rb
    cdef long long cs = _geo(eng).cluster_size
    if ti < <long long>_hv(VBQ_GA(eng, "refcount_table_size"), eng, "refcount_table_size"):
        rb = _reftable(eng, ti)
        rb &= REFT_OFFSET_MASK
        if rb and not rb & <uint64_t>(cs - 1):
            ci[0] = _cache_get(eng, _hv(VBQ_GA(eng, "rb_cache"), eng, "rb_cache"), <long long>rb, True)
            return 0
    r, i = eng.alloc_refcount_block(cluster_index)
    ci[0] = i
    return r


cdef long long _update_refcount(object eng, long long offset, long long length, long long addend,
                                bint decrease, int dtype) except? -99:
    """Qcow2Engine.update_refcount (64-bit refcounts: the Python method)"""
    cdef int order = _geo(eng).refcount_order
    if order > 5:
        return Qcow2Engine.update_refcount(eng, offset, length, addend, decrease, dtype)
    if length <= 0:
        return 0
    if decrease:
        _cache_set_dependency(eng, _hv(VBQ_GA(eng, "rb_cache"), eng, "rb_cache"), _hv(VBQ_GA(eng, "l2_cache"), eng, "l2_cache"))
    cdef int cb = _geo(eng).cluster_bits
    cdef long long cs = 1LL << cb
    cdef int rbb = _geo(eng).refcount_block_bits
    cdef long long rbs_mask = (1LL << rbb) - 1
    cdef long long refcount_max = _geo(eng).refcount_max
    cdef long long start = offset & ~(cs - 1)
    cdef long long last = (offset + length - 1) & ~(cs - 1)
    rbc = _hv(VBQ_GA(eng, "rb_cache"), eng, "rb_cache")
    cdef Py_ssize_t ci = -1, t
    cdef long long old_ti = -1, ti, cluster_index, bi, rc, new
    cdef long long ret = 0, r
    cdef long long cluster_offset = start
    try:
        while cluster_offset <= last:
            cluster_index = cluster_offset >> cb
            ti = cluster_index >> rbb
            if ti != old_ti:
                if ci >= 0:
                    _put(rbc, ci)
                    ci = -1
                r = _alloc_refcount_block(eng, cluster_index, &ci)
                if r == -EAGAIN:
                    if _hv(VBQ_GA(eng, "free_cluster_index"), eng, "free_cluster_index") > start >> cb:
                        _sa(eng, "free_cluster_index", start >> cb)
                    ret = r
                    break
            old_ti = ti
            (<list>_hv(VBQ_GA(rbc, "dirty"), rbc, "dirty"))[ci] = True
            bi = cluster_index & rbs_mask
            table = (<list>_hv(VBQ_GA(rbc, "tables"), rbc, "tables"))[ci]
            rc = _refcount_get(table, bi, order)
            new = rc - addend if decrease else rc + addend
            if new < 0 or new > refcount_max:
                ret = -EINVAL
                break
            if new == 0 and cluster_index < _hv(VBQ_GA(eng, "free_cluster_index"), eng, "free_cluster_index"):
                _sa(eng, "free_cluster_index", cluster_index)
            _refcount_set(table, bi, order, new)
            if new == 0:
                t = rbc.is_table_offset(offset)
                if t >= 0:
                    _put(rbc, ci)
                    ci = -1
                    old_ti = -1
                    rbc.discard(t)
                eng.cache_discard_offset(_hv(VBQ_GA(eng, "l2_cache"), eng, "l2_cache"), offset)
                if _hv(VBQ_GA(eng, "discard_passthrough"), eng, "discard_passthrough")[dtype]:
                    eng.update_refcount_discard(cluster_offset, cs)
            cluster_offset += cs
    finally:
        if ci >= 0:
            _put(rbc, ci)
    if not _hv(VBQ_GA(eng, "cache_discards"), eng, "cache_discards"):
        if _hv(VBQ_GA(eng, "discards"), eng, "discards"):
            eng.process_discards(ret)
        else:
            eng.discards = []
    if ret < 0:
        if ret != -EAGAIN:
            _update_refcount(eng, offset, cluster_offset - offset, addend, not decrease, DISCARD_NEVER)
            raise Qcow2Error(ret, "refcount overflow or underflow")
        if cluster_offset > offset:
            _update_refcount(eng, offset, cluster_offset - offset, addend, not decrease, DISCARD_NEVER)
    return ret


cdef long long _alloc_clusters_noref(object eng, long long size, long long max_) except -1:
    """Qcow2Engine.alloc_clusters_noref"""
    if _hv(VBQ_GA(eng, "cache_discards"), eng, "cache_discards"):
        eng.process_discards(0)
    cdef int cb = _geo(eng).cluster_bits
    cdef long long n = (size + (1LL << cb) - 1) >> cb
    cdef long long i = 0
    cdef long long idx
    while i < n:
        idx = _hv(VBQ_GA(eng, "free_cluster_index"), eng, "free_cluster_index")
        _sa(eng, "free_cluster_index", idx + 1)
        if _get_refcount(eng, idx):
            i = 0
            continue
        i += 1
    cdef long long fci = _hv(VBQ_GA(eng, "free_cluster_index"), eng, "free_cluster_index")
    if fci > 0 and fci - 1 > max_ >> cb:
        raise Qcow2Error(-EFBIG, "image would exceed the maximum cluster offset")
    return (fci - n) << cb


cdef long long _alloc_clusters(object eng, long long size) except -1:
    """Qcow2Engine.alloc_clusters"""
    cdef long long off
    while True:
        off = _alloc_clusters_noref(eng, size, QCOW_MAX_CLUSTER_OFFSET)
        if _update_refcount(eng, off, size, 1, False, DISCARD_NEVER) != -EAGAIN:
            return off


cdef long long _alloc_clusters_at(object eng, long long offset, long long nb_clusters) except -1:
    """Qcow2Engine.alloc_clusters_at"""
    cdef int cb = _geo(eng).cluster_bits
    cdef long long ci, i
    if nb_clusters == 0:
        return 0
    while True:
        ci = offset >> cb
        i = 0
        while i < nb_clusters:
            if _get_refcount(eng, ci):
                break
            ci += 1
            i += 1
        if _update_refcount(eng, offset, i << cb, 1, False, DISCARD_NEVER) != -EAGAIN:
            return i


# == L2 tables ===============================================================================================

cdef inline long long _slice_index(object eng, long long off):
    """Qcow2Engine.l2_slice_index"""
    return (off >> <int>_geo(eng).cluster_bits) & (<long long>_geo(eng).l2_slice_size - 1)


cdef Py_ssize_t _l2_load(object eng, long long offset, long long l2_offset) except -1:
    """Qcow2Engine.l2_load"""
    cdef int cb = _geo(eng).cluster_bits
    cdef long long start = 8 * (((offset >> cb) & (<long long>_geo(eng).l2_size - 1))
                                - _slice_index(eng, offset))
    return _cache_get(eng, _hv(VBQ_GA(eng, "l2_cache"), eng, "l2_cache"), l2_offset + start, True)


cdef Py_ssize_t _get_cluster_table(object eng, long long offset, Py_ssize_t *l2i) except -1:
    """Qcow2Engine.get_cluster_table (an L2 table to allocate or COW, an offset beyond the L1
    table or a misaligned L2 table: the Python method)"""
    cdef int cb = _geo(eng).cluster_bits
    cdef long long l1i = offset >> (<int>_geo(eng).l2_bits + cb)
    cdef uint64_t l1e, l2_offset
    if l1i < <long long>_geo(eng).l1_size:
        l1e = (<list>_hv(VBQ_GA(eng, "l1_table"), eng, "l1_table"))[l1i]
        l2_offset = l1e & L1E_OFFSET_MASK
        if l1e & QCOW_OFLAG_COPIED and not l2_offset & ((1ULL << cb) - 1):
            l2i[0] = _slice_index(eng, offset)
            return _l2_load(eng, offset, <long long>l2_offset)
    ci, i = Qcow2Engine.get_cluster_table(eng, offset)
    l2i[0] = i
    return ci


cdef inline bint _needs_new_alloc(uint64_t e) noexcept:
    """Qcow2Engine.cluster_needs_new_alloc"""
    cdef int t = _ctype(e)
    if (t == T_NORMAL or t == T_ZERO_ALLOC) and e & QCOW_OFLAG_COPIED:
        return False
    return True


cdef long long _count_single_write_clusters(object eng, long long n, object table, Py_ssize_t l2i,
                                            bint new_alloc) except -1:
    """Qcow2Engine.count_single_write_clusters"""
    cdef long long cs = _geo(eng).cluster_size
    cdef uint64_t expected = _get(table, l2i) & L2E_OFFSET_MASK
    cdef uint64_t e
    cdef long long i = 0
    while i < n:
        e = _get(table, l2i + i)
        if _needs_new_alloc(e) != new_alloc:
            break
        if not new_alloc:
            if expected != e & L2E_OFFSET_MASK:
                break
            expected += cs
        i += 1
    return i


cdef int _calculate_l2_meta(object eng, long long host_cluster_offset, long long guest_offset,
                            long long nbytes, object table, Py_ssize_t l2i0, bint keep_old,
                            list metas) except -1:
    """Qcow2Engine.calculate_l2_meta"""
    cdef long long cs = _geo(eng).cluster_size
    cdef int cb = _geo(eng).cluster_bits
    cdef long long cow_start_to = guest_offset & (cs - 1)
    cdef long long cow_end_from = cow_start_to + nbytes
    cdef long long nb_clusters = (cow_end_from + cs - 1) >> cb
    cdef bint skip_cow = keep_old
    cdef long long i, cow_start_from, cow_end_to
    cdef int t_first, t_last
    for i in range(nb_clusters):
        if skip_cow and _ctype(_get(table, l2i0 + i)) != T_NORMAL:
            skip_cow = False
    if skip_cow:
        return 0
    t_first = _ctype(_get(table, l2i0))
    t_last = _ctype(_get(table, l2i0 + nb_clusters - 1))
    if not keep_old:
        cow_start_from = 0 if (t_first == T_COMPRESSED or t_first == T_NORMAL or
                               t_first == T_ZERO_ALLOC) else cow_start_to & ~(cs - 1)
        cow_end_to = (cow_end_from + cs - 1) // cs * cs
    else:
        cow_start_from = cow_start_to if t_first == T_NORMAL else 0
        cow_end_to = cow_end_from if t_last == T_NORMAL else (cow_end_from + cs - 1) // cs * cs
    metas.append({"offset": guest_offset & ~(cs - 1), "alloc_offset": host_cluster_offset,
                  "nb_clusters": nb_clusters, "keep_old": keep_old,
                  "cow_start": [cow_start_from, cow_start_to - cow_start_from],
                  "cow_end": [cow_end_from, cow_end_to - cow_end_from], "skip_cow": False})
    return 0


cdef inline long long _min3(long long a, long long b, long long c) noexcept:
    if b < a:
        a = b
    if c < a:
        a = c
    return a


cdef int _handle_copied(object eng, long long guest_offset, long long *host_offset,
                        long long *nbytes, list metas) except -1:
    """Qcow2Engine.handle_copied -> ret; host_offset and nbytes are in/out"""
    cdef long long cs = _geo(eng).cluster_size
    cdef int cb = _geo(eng).cluster_bits
    cdef long long oic = guest_offset & (cs - 1)
    cdef long long n = (oic + nbytes[0] + cs - 1) >> cb
    n = _min3(n, <long long>_geo(eng).l2_slice_size - _slice_index(eng, guest_offset),
              BDRV_REQUEST_MAX_BYTES >> cb)
    cdef Py_ssize_t l2i
    cdef Py_ssize_t ci = _get_cluster_table(eng, guest_offset, &l2i)
    l2c = _hv(VBQ_GA(eng, "l2_cache"), eng, "l2_cache")
    table = (<list>_hv(VBQ_GA(l2c, "tables"), l2c, "tables"))[ci]
    cdef uint64_t e
    cdef long long cluster_offset, keep, nb
    try:
        e = _get(table, l2i)
        cluster_offset = e & L2E_OFFSET_MASK
        if _needs_new_alloc(e):
            return 0
        if cluster_offset & (cs - 1):
            kind = "Preallocated zero" if e & QCOW_OFLAG_ZERO else "Data"
            eng.signal_corruption(True, f"{kind} cluster offset {cluster_offset:#x} unaligned "
                                  f"(guest offset: {guest_offset:#x})")
        if host_offset[0] != INV and cluster_offset != host_offset[0]:
            nbytes[0] = 0
            return 0
        keep = _count_single_write_clusters(eng, n, table, l2i, False)
        nb = keep * cs - oic
        if nb < nbytes[0]:
            nbytes[0] = nb
        _calculate_l2_meta(eng, cluster_offset, guest_offset, nbytes[0], table, l2i, True, metas)
        host_offset[0] = cluster_offset + oic
        return 1
    finally:
        _put(l2c, ci)


cdef int _handle_alloc(object eng, long long guest_offset, long long *host_offset,
                       long long *nbytes, list metas) except -1:
    """Qcow2Engine.handle_alloc -> ret; host_offset and nbytes are in/out"""
    cdef long long cs = _geo(eng).cluster_size
    cdef int cb = _geo(eng).cluster_bits
    cdef long long oic = guest_offset & (cs - 1)
    cdef long long n = (oic + nbytes[0] + cs - 1) >> cb
    n = _min3(n, <long long>_geo(eng).l2_slice_size - _slice_index(eng, guest_offset),
              BDRV_REQUEST_MAX_BYTES >> cb)
    cdef Py_ssize_t l2i
    cdef Py_ssize_t ci = _get_cluster_table(eng, guest_offset, &l2i)
    l2c = _hv(VBQ_GA(eng, "l2_cache"), eng, "l2_cache")
    cdef long long alloc, requested, avail, nb
    try:
        table = (<list>_hv(VBQ_GA(l2c, "tables"), l2c, "tables"))[ci]
        n = _count_single_write_clusters(eng, n, table, l2i, True)
        if host_offset[0] == INV:
            alloc = _alloc_clusters(eng, n * cs)
        else:
            alloc = host_offset[0] & ~(cs - 1)
            n = _alloc_clusters_at(eng, alloc, n)
        if n == 0:
            nbytes[0] = 0
            return 0
        requested = nbytes[0] + oic
        avail = n << cb
        nb = requested if requested < avail else avail
        host_offset[0] = alloc + oic
        if nb - oic < nbytes[0]:
            nbytes[0] = nb - oic
        table = (<list>_hv(VBQ_GA(l2c, "tables"), l2c, "tables"))[ci]
        _calculate_l2_meta(eng, alloc, guest_offset, nbytes[0], table, l2i, False, metas)
        return 1
    finally:
        _put(l2c, ci)


cdef long long _alloc_host_offset(object eng, long long offset, long long nbytes,
                                  long long *cur_out, list metas) except? -2:
    """Qcow2Engine.alloc_host_offset -> host offset; cur_out: the bytes mapped"""
    cdef long long start = offset, remaining = nbytes
    cdef long long cluster_offset = INV, host_offset = INV, cur = 0
    cdef int ret
    while True:
        if host_offset == INV and cluster_offset != INV:
            host_offset = cluster_offset
        start += cur
        remaining -= cur
        if cluster_offset != INV:
            cluster_offset += cur
        if remaining == 0:
            break
        cur = remaining
        ret = _handle_copied(eng, start, &cluster_offset, &cur, metas)
        if ret:
            continue
        if cur == 0:
            break
        ret = _handle_alloc(eng, start, &cluster_offset, &cur, metas)
        if ret:
            continue
        break
    cur_out[0] = nbytes - remaining
    return host_offset


cdef int _alloc_cluster_link_l2(object eng, dict mt) except -1:
    """Qcow2Engine.alloc_cluster_link_l2 (a cached, COPIED L2 table: its get and put natively)"""
    cdef dict ed = _idict(eng)
    cdef dict cd
    cdef Py_ssize_t l2i, ci
    cdef list old = None
    cdef long long nb, i, alloc, off, l1i, key
    cdef uint64_t e, l1e, l2_offset
    cdef Geo* g = _geo(eng)
    cdef int cb = g.cluster_bits
    if ed is None:
        ed = {}
    if _hv(VBQ_H(ed, "use_lazy_refcounts"), eng, "use_lazy_refcounts"):
        eng.mark_dirty()
    c = _hv(VBQ_H(ed, "l2_cache"), eng, "l2_cache")
    if not <long long>_hv(VBQ_H(ed, "incompatible_features"), eng, "incompatible_features") & INCOMPAT_DIRTY:
        _cache_set_dependency(eng, c, _hv(VBQ_H(ed, "rb_cache"), eng, "rb_cache"))
    o_off = _hk(VBQ_H(mt, "offset"), mt, "offset")
    nb = _hk(VBQ_H(mt, "nb_clusters"), mt, "nb_clusters")
    alloc = _hk(VBQ_H(mt, "alloc_offset"), mt, "alloc_offset")
    # get_cluster_table's common case: the L1 entry is COPIED, its slice cached, nobody holds it
    # (cache_get then put: the LRU bump of Cache.put)
    ci = -1
    cd = _idict(c)
    if cd is not None and type(o_off) is int and o_off >= 0 and _hk(VBQ_H(mt, "keep_old"), mt, "keep_old") is False:
        off = o_off
        l1i = off >> (g.l2_bits + cb)
        if l1i < g.l1_size:
            x = (<list>_hv(VBQ_H(ed, "l1_table"), eng, "l1_table"))[l1i]
            if type(x) is int and x >= 0:
                l1e = x
                l2_offset = l1e & L1E_OFFSET_MASK
                if l1e & QCOW_OFLAG_COPIED and l2_offset and not l2_offset & ((1ULL << cb) - 1):
                    l2i = (off >> cb) & (g.l2_slice_size - 1)
                    key = <long long>l2_offset + 8 * (((off >> cb) & (g.l2_size - 1)) - l2i)
                    if not key % <long long>_hv(VBQ_H(cd, "table_size"), c, "table_size"):
                        ci = _lookup_l(_hv(VBQ_H(cd, "offsets"), c, "offsets"), key)
                        if ci >= 0 and (<list>_hv(VBQ_H(cd, "ref"), c, "ref"))[ci] != 0:
                            ci = -1
    if ci >= 0:
        (<list>_hv(VBQ_H(cd, "dirty"), c, "dirty"))[ci] = True
        table = (<list>_hv(VBQ_H(cd, "tables"), c, "tables"))[ci]
        for i in range(nb):
            e = _get(table, l2i + i)
            if e:
                if old is None:
                    old = []
                old.append(e)
            _set(table, l2i + i, <uint64_t>(alloc + (i << cb)) | QCOW_OFLAG_COPIED)
        _lru_bump_d(cd, c, ci, 1)
        if old is not None:
            for x in old:
                eng.free_any_cluster(x, DISCARD_NEVER)
        return 0
    old = []
    ci = _get_cluster_table(eng, mt["offset"], &l2i)
    c = _hv(VBQ_GA(eng, "l2_cache"), eng, "l2_cache")
    (<list>_hv(VBQ_GA(c, "dirty"), c, "dirty"))[ci] = True
    table = (<list>_hv(VBQ_GA(c, "tables"), c, "tables"))[ci]
    for i in range(nb):
        e = _get(table, l2i + i)
        if e:
            old.append(e)
        _set(table, l2i + i, <uint64_t>(alloc + (i << cb)) | QCOW_OFLAG_COPIED)
    _put(c, ci)
    if not mt["keep_old"]:
        for x in old:
            eng.free_any_cluster(x, DISCARD_NEVER)
    return 0


# == reads ===================================================================================================

cdef int _gho(object eng, long long offset, long long nbytes, uint64_t* host_out, long long* cur_out,
              uint64_t* entry_out) except -1:
    """Qcow2Engine.get_host_offset in C: -> the cluster type (T_*; host_out, cur_out, entry_out:
    the rest of its tuple), or T_PY for a misaligned L2 table (the caller runs the Python method)"""
    cdef Geo* g = _geo(eng)
    cdef long long cs = g.cluster_size
    cdef int cb = g.cluster_bits
    cdef long long oic = offset & (cs - 1)
    cdef long long needed = nbytes + oic
    cdef long long avail = (g.l2_slice_size - ((offset >> cb) & (g.l2_slice_size - 1))) << cb
    if avail < needed:
        needed = avail
    cdef long long l1i = offset >> (g.l2_bits + cb)
    cdef uint64_t l1e = 0, l2_offset
    if l1i < g.l1_size:
        l1e = (<list>_hv(VBQ_GA(eng, "l1_table"), eng, "l1_table"))[l1i]
    if l1i >= g.l1_size or not l1e & L1E_OFFSET_MASK:
        host_out[0] = 0
        cur_out[0] = (avail if avail < needed else needed) - oic
        entry_out[0] = 0
        return T_UNALLOCATED
    l2_offset = l1e & L1E_OFFSET_MASK
    if l2_offset & <uint64_t>(cs - 1):
        return T_PY
    cdef Py_ssize_t ci = _l2_load(eng, offset, <long long>l2_offset)
    l2c = _hv(VBQ_GA(eng, "l2_cache"), eng, "l2_cache")
    cdef Py_ssize_t l2i
    cdef uint64_t e, ei, expected, hc, host
    cdef int t, ti
    cdef long long count, nb, i, got
    try:
        table = (<list>_hv(VBQ_GA(l2c, "tables"), l2c, "tables"))[ci]
        l2i = (offset >> cb) & (g.l2_slice_size - 1)
        e = _get(table, l2i)
        t = _ctype(e)
        if g.version < 3 and (t == T_ZERO_PLAIN or t == T_ZERO_ALLOC):
            eng.signal_corruption(True, f"Zero cluster entry found in pre-v3 image (L2 offset: "
                                  f"{l2_offset:#x}, L2 index: {l2i:#x})")
        host = 0
        if t == T_COMPRESSED:
            host = e
        elif t == T_ZERO_ALLOC or t == T_NORMAL:
            hc = e & L2E_OFFSET_MASK
            host = hc + oic
            if hc & <uint64_t>(cs - 1):
                eng.signal_corruption(True, f"Cluster allocation offset {hc:#x} unaligned (L2 offset: "
                                      f"{l2_offset:#x}, L2 index: {l2i:#x})")
        count = 0
        nb = (needed + cs - 1) >> cb
        expected = e & L2E_OFFSET_MASK
        for i in range(nb):
            ei = _get(table, l2i + i)
            ti = _ctype(ei)
            if i == 0:
                count = 1
                if t == T_COMPRESSED:
                    break
                continue
            if ti != t:
                break
            if t == T_NORMAL or t == T_ZERO_ALLOC:
                expected += cs
                if expected != ei & L2E_OFFSET_MASK:
                    break
            count += 1
        got = count << cb
        if needed < got:
            got = needed
        host_out[0] = host
        cur_out[0] = got - oic
        entry_out[0] = e
        return t
    finally:
        _put(l2c, ci)


cdef tuple _get_host_offset(object eng, long long offset, long long nbytes):
    """Qcow2Engine.get_host_offset (a misaligned L2 table: the Python method)"""
    cdef uint64_t host, e
    cdef long long cur
    cdef int t = _gho(eng, offset, nbytes, &host, &cur, &e)
    if t == T_PY:
        return Qcow2Engine.get_host_offset(eng, offset, nbytes)
    return TNAME[t], host, cur, e


cdef bint _is_zero_fast(object eng, long long offset, long long nbytes) except -1:
    """Qcow2Engine.is_zero_fast"""
    cdef long long end = offset + nbytes
    cdef long long size = _geo(eng).size
    cdef long long n
    cdef uint64_t h, e
    cdef int t
    if size < end:
        end = size
    while offset < end:
        t = _gho(eng, offset, end - offset, &h, &n, &e)
        if t == T_PY:
            tn, _h, n, _e = Qcow2Engine.get_host_offset(eng, offset, end - offset)
            t = TNAME.index(tn)
        if t == T_ZERO_PLAIN or t == T_ZERO_ALLOC:
            pass
        elif t == T_UNALLOCATED:
            backing = _hv(VBQ_GA(eng, "backing"), eng, "backing")
            if backing is not None and offset < backing.size:
                return False
        else:
            return False
        offset += n if n > 1 else 1
    return True


# == the engine with the compiled methods ==================================================================

class FastQcow2Engine(Qcow2Engine):
    """emu.block.qcow2.engine.Qcow2Engine with its hot methods compiled (the functions above).
    It pickles and copies as a plain Qcow2Engine."""

    def __reduce_ex__(self, proto):
        # a plain Qcow2Engine with this state (copyreg._reconstructor: object.__new__(Qcow2Engine))
        return (_copyreg._reconstructor, (Qcow2Engine, object, None), self.__getstate__())

    def pread(self, offset, n):
        return _pread(self, offset, n)

    def io(self, op, fn, what, offset=0, data=None, length=0, **extra):
        _io(self, op, fn, what, offset, data, length, extra)

    def executed(self, item):
        _executed(self, item)

    def check_metadata_overlap(self, ign, offset, size):
        return _check_metadata_overlap(self, ign, offset, size)

    def pre_write_overlap_check(self, ign, offset, size):
        _pre_write_overlap_check(self, ign, offset, size)

    def cache_get(self, c, offset, read=True):
        return _cache_get(self, c, offset, read)

    def cache_set_dependency(self, c, dep):
        _cache_set_dependency(self, c, dep)

    def get_refcount(self, cluster_index):
        return _get_refcount(self, cluster_index)

    def update_refcount(self, offset, length, addend, decrease, dtype):
        return _update_refcount(self, offset, length, addend, decrease, dtype)

    def alloc_clusters(self, size):
        return _alloc_clusters(self, size)

    def alloc_clusters_at(self, offset, nb_clusters):
        return _alloc_clusters_at(self, offset, nb_clusters)

    def l2_load(self, offset, l2_offset):
        return _l2_load(self, offset, l2_offset)

    def get_cluster_table(self, offset):
        cdef Py_ssize_t l2i
        ci = _get_cluster_table(self, offset, &l2i)
        return ci, l2i

    def alloc_host_offset(self, offset, nbytes):
        cdef long long cur
        cdef list metas = []
        host = _alloc_host_offset(self, offset, nbytes, &cur, metas)
        return host, cur, metas

    def alloc_cluster_link_l2(self, m):
        _alloc_cluster_link_l2(self, m)

    def get_host_offset(self, offset, nbytes):
        return _get_host_offset(self, offset, nbytes)

    def is_zero_fast(self, offset, nbytes):
        return _is_zero_fast(self, offset, nbytes)


cdef object _FastQcow2Engine = FastQcow2Engine

# _ga/_sa read and write these fields in the instance's __dict__: no class may override them
for _cls, _names in ((Qcow2Engine, ("cluster_bits", "l2_cache", "cluster_size", "plan", "free_cluster_index",
                                    "file_size", "pending", "rb_cache", "l2_slice_size", "l1_size",
                                    "refcount_table_size", "refcount_table", "refcount_block_bits", "l1_table",
                                    "refcount_order", "l2_bits", "discards", "cache_discards", "version",
                                    "use_lazy_refcounts", "snapshots_size", "snapshots_offset", "snapshots",
                                    "size", "refcount_table_offset", "refcount_max", "pread_file",
                                    "overlap_check", "max_refcount_table_index", "l2_size", "l1_table_offset",
                                    "incompatible_features", "discard_passthrough", "backing")),
                     (FastQcow2Engine, ()),
                     (_QC.Cache, ("tables", "depends", "name", "ref", "lru_counter", "dirty", "table_size",
                                  "offsets", "lru")),
                     (_Q.Qcow2Format, ("backing",))):
    for _n in _names:
        for _k in _cls.__mro__:
            assert not hasattr(type(_k.__dict__.get(_n)), "__set__"), (_cls, _n)
for _n in ("cluster_bits", "plan", "free_cluster_index", "l2_cache", "rb_cache", "pending"):
    assert _n not in FastQcow2Engine.__dict__ and _n not in Qcow2Engine.__dict__, _n


cdef inline object _fast_engine(object f):
    eng = f.engine
    if type(eng) is Qcow2Engine:
        eng.__class__ = _FastQcow2Engine
    return eng


def detach_machine(m):
    """Give the machine's qcow2 engine its plain class back (state is untouched)."""
    f = getattr(m, "fmt", None)
    eng = getattr(f, "engine", None)
    if type(eng) is _FastQcow2Engine:
        eng.__class__ = Qcow2Engine
    global _G_eng
    _G_eng = None


# == the driver's compute step (driver.py) ====================================================================

cdef object _finish(object m, object bid):
    """qcow2 driver._finish"""
    if _Q._finish is not _PY_FINISH:
        return _Q._finish(m, bid)
    f = m.fmt
    co = f.cos.pop(bid)
    f.lock_owner = None
    if f.lock_queue:
        nxt = f.lock_queue.pop(0)
        f.lock_owner = nxt
        sched_post(m.sim, "qemu", "qcow2.compute", (nxt,))
    if bid == 0:            # close: nobody to return to
        return
    req = m.block.reqs[bid]
    req["ret"] = co["ret"]
    sched_cont(m.sim, "bdrv.co_done", (bid,))


cdef str _errname(object ret):
    """driver._errname"""
    return "0" if not ret else f"-{ERRNO_NAMES.get(-ret, -ret)}"


cdef list _iov_slice(object iov, long long start, long long n):
    """driver._iov_slice"""
    cdef list out = []
    cdef long long pos = 0, gpa, ln, lo, hi
    for g, l in iov:
        gpa = g
        ln = l
        lo = start if start > pos else pos
        hi = start + n if start + n < pos + ln else pos + ln
        if lo < hi:
            out.append((gpa + lo - pos, hi - lo))
        pos += ln
    return out


cdef list _data_parts(object m, object bid, dict co, long long qoff, long long n):
    """driver._data_parts"""
    cdef PyObject* r
    cdef list out
    cdef long long pos = 0, gpa, ln, lo, hi
    if _hn(VBQ_H(co, "zero")):
        return [("zero", n)]
    reqs = _m_reqs(m)
    if type(reqs) is not dict:
        return [("ram", x, y) for x, y in _iov_slice(reqs.get(bid, {})["qiov"], qoff, n)]
    r = PyDict_GetItemWithError(reqs, bid)
    req = <object>r if r != NULL else {}
    r = VBQ_H(req, "qiov")
    iov = <object>r if r != NULL else req["qiov"]
    if type(iov) is not list:
        return [("ram", x, y) for x, y in _iov_slice(iov, qoff, n)]
    out = []                            # (_iov_slice's pieces, each as a "ram" part)
    for e in <list>iov:
        g, l = e
        gpa = g
        ln = l
        lo = qoff if qoff > pos else pos
        hi = qoff + n if qoff + n < pos + ln else pos + ln
        if lo < hi:
            out.append(("ram", gpa + lo - pos, hi - lo))
        pos += ln
    return out


cdef int _write_task(object m, object eng, object bid, dict co, dict piece) except -1:
    """driver._write_task"""
    cdef list metas = piece["metas"]
    cdef dict mt
    cdef list cs, ce
    cdef long long start, nb
    for mt in metas:
        cs, ce = mt["cow_start"], mt["cow_end"]
        if not cs[1] and not ce[1]:
            continue
        if _is_zero_fast(eng, mt["offset"] + cs[0], cs[1]) and \
                _is_zero_fast(eng, mt["offset"] + ce[0], ce[1]):
            start = mt["alloc_offset"] + cs[0]
            nb = ce[0] + ce[1] - cs[0]
            _pre_write_overlap_check(eng, 0, start, nb)
            _io_kw(eng, "write_zeroes", "handle_alloc_space",
                   f"COW areas read as zero: zero {_hexll(start)}+{_hexll(nb)} (fallocate ZERO_RANGE)", start,
                   nb, "kind", "data")
            mt["skip_cow"] = True
    for mt in metas:
        cs, ce = mt["cow_start"], mt["cow_end"]
        if (not cs[1] and not ce[1]) or mt["skip_cow"]:
            continue
        if mt["offset"] + cs[0] + cs[1] != piece["guest"]:
            continue
        if mt["offset"] + ce[0] != piece["guest"] + piece["bytes"]:
            continue
        mt["data"] = True
        return 0
    _io_kw(eng, "guest_write", "bdrv_co_pwritev_part", f"guest data {_hex(piece['bytes'])} bytes -> host "
           f"{_hex(piece['host'])}", piece["host"], piece["bytes"],
           "parts", _data_parts(m, bid, co, piece["qoff"], piece["bytes"]), "kind", "data",
           "piece", len(co["pieces"]) - 1)
    return 0


cdef long long _FAST_ALLOCS[3]      # (and [2]: the flush phases bulk_compute ran)
_FAST_ALLOCS[0] = 0
_FAST_ALLOCS[1] = 0
_FAST_ALLOCS[2] = 0


cdef inline long long _rc_get(const uint8_t* p, long long index, int order) noexcept:
    """layout.refcount_get on a refcount block's bytes (orders 0-5, index in range)"""
    cdef int bits = 1 << order
    cdef int per, n, k
    cdef uint64_t v
    if bits < 8:
        per = 8 // bits
        return (p[index // per] >> ((index % per) * bits)) & ((1 << bits) - 1)
    n = bits // 8
    v = 0
    for k in range(n):
        v = (v << 8) | p[index * n + k]
    return <long long>v


cdef int _grow_file_size_2(dict ed, object eng, long long e1, long long e2) except -1:
    """_grow_file_size to e1, then to e2 (an int file_size: to the larger at once)"""
    cdef long long f
    fs = _hv(VBQ_H(ed, "file_size"), eng, "file_size")
    if type(fs) is int:
        if e2 > e1:
            e1 = e2
        if (f < e1) if _ll(fs, &f) else (fs < e1):
            VBQ_HS(ed, "file_size", e1)
        return 0
    _grow_file_size_d(ed, eng, e1)
    _grow_file_size_d(ed, eng, e2)
    return 0


cdef int _grow_file_size_d(dict ed, object eng, long long end) except -1:
    """_grow_file_size with the engine's __dict__ ed at hand (end: a long long)"""
    cdef long long f
    fs = _hv(VBQ_H(ed, "file_size"), eng, "file_size")
    if type(fs) is int:
        if (f < end) if _ll(fs, &f) else (fs < end):
            VBQ_HS(ed, "file_size", end)
        return 0
    ed["file_size"] = max(fs, end)
    return 0


cdef int _plan_zero_cow(list plan, object pending, long long off, long long zn) except -1:
    """io("write_zeroes", "handle_alloc_space", ..., off, length=zn, kind="data") of
    handle_alloc_space's zeroed COW areas (0 <= zn < 2**40), but for the engine's file_size
    (the caller grows it: _grow_file_size_2)"""
    cdef PyObject* v[6]
    cdef object o_off = off, o_zn = zn
    what = _s_zero_cow(off, zn)
    v[0] = <PyObject*>S_WRITE_ZEROES
    v[1] = <PyObject*>S_HANDLE_ALLOC_SPACE
    v[2] = <PyObject*>what
    v[3] = <PyObject*>o_off
    v[4] = <PyObject*>o_zn
    v[5] = <PyObject*>S_DATA
    item = _from_tpl(TPL_ZERO, v, 6)
    pending.append([o_off, vb_zeros(zn)])
    plan.append(item)
    return 0


cdef int _plan_guest_write(m, list plan, object pending, bid, dict co, object o_qoff, long long cur,
                           long long host, object o_cur, object o_host, Py_ssize_t npieces) except -1:
    """The plan item writing the guest's data of the request's last piece (the write phase's
    bdrv_co_pwritev_part: _write_task's io("guest_write", ...)), as _fast_alloc and
    _fast_in_place plan it (o_qoff: the piece's qoff, o_cur and o_host: the piece's "bytes" and
    "host" objects, which _write_task passes on; npieces: len(co["pieces"])), but for the
    engine's file_size (the caller grows it: _grow_file_size_2)"""
    cdef PyObject* v[8]
    what = _s_guest_data(cur, host)
    parts = _data_parts(m, bid, co, o_qoff, cur)
    cdef object o_pi = npieces - 1
    v[0] = <PyObject*>S_GUEST_WRITE
    v[1] = <PyObject*>S_PWRITEV_PART
    v[2] = <PyObject*>what
    v[3] = <PyObject*>o_host
    v[4] = <PyObject*>o_cur
    v[5] = <PyObject*>parts
    v[6] = <PyObject*>S_DATA
    v[7] = <PyObject*>o_pi
    item = _from_tpl(TPL_GWRITE, v, 8)
    pending.append([o_host, b""])
    plan.append(item)
    return 0


cdef str S_WRITE_ZEROES = "write_zeroes"
cdef str S_HANDLE_ALLOC_SPACE = "handle_alloc_space"
cdef str S_GUEST_WRITE = "guest_write"
cdef str S_PWRITEV_PART = "bdrv_co_pwritev_part"
cdef str S_DATA = "data"


cdef dict _new_piece(object o_pos, object o_host, object o_cur, object o_qoff, list metas):
    """_write_machine's piece {"guest", "host", "bytes", "qoff", "metas", "failed": False}"""
    cdef PyObject* v[6]
    v[0] = <PyObject*>o_pos
    v[1] = <PyObject*>o_host
    v[2] = <PyObject*>o_cur
    v[3] = <PyObject*>o_qoff
    v[4] = <PyObject*>metas
    v[5] = <PyObject*>PY_FALSE
    return _from_tpl(TPL_PIECE, v, 6)


cdef int _piece_done(dict co, dict piece, object o_pos, object o_rem, object o_qoff,
                     long long cur, Py_ssize_t* npieces) except -1:
    """_write_machine: co["pieces"].append(piece), co["pos"] += cur, co["remaining"] -= cur,
    co["qoff"] += cur (o_*: their values, read before)"""
    pieces = _hk(VBQ_H(co, "pieces"), co, "pieces")
    if type(pieces) is list:
        (<list>pieces).append(piece)
        npieces[0] = PyList_GET_SIZE(pieces)
    else:
        pieces.append(piece)
        npieces[0] = len(pieces)
    cdef long long k
    if _ll(o_pos, &k) and 0 <= k < (1LL << 62):
        VBQ_HS(co, "pos", k + cur)
    else:
        co["pos"] = o_pos + cur
    if _ll(o_rem, &k) and 0 <= k < (1LL << 62):
        VBQ_HS(co, "remaining", k - cur)
    else:
        co["remaining"] = o_rem - cur
    if _ll(o_qoff, &k) and 0 <= k < (1LL << 62):
        VBQ_HS(co, "qoff", k + cur)
    else:
        co["qoff"] = o_qoff + cur
    return 0


cdef bint _fast_alloc(object m, object eng, object bid, dict co) except -1:
    """_write_machine's alloc step (driver.py) on its common path, natively: the rest of the
    request maps to one run of unallocated clusters of a cached L2 slice
    (qcow2_alloc_host_offset: handle_copied finds nothing, handle_alloc allocates), taken
    first-fit from free clusters of one cached refcount block (alloc_clusters_noref,
    update_refcount), no overlap check hits, and the COW areas read as zero (no backing file:
    handle_alloc_space zeroes them); then the guest data write (_write_task).  It makes
    exactly the changes those functions make (caches' LRU and dirty marks, the refcounts,
    free_cluster_index, the metas, the piece, the plan and the pending writes).  False, having
    changed nothing: not that path (the compiled functions run it)."""
    cdef Geo* g = _geo(eng)
    cdef long long cs = g.cluster_size, pos, rem, oic, n, k, kk, i, idx, fci, nchecks, cur
    cdef long long alloc_first, off, host, ce_from, ce_to, zstart, zn, a_off, a_end, nzget
    cdef int cb = g.cluster_bits, order = g.refcount_order, rbb = g.refcount_block_bits
    cdef long long l1i, l2i, ti0, key
    cdef uint64_t l1e, l2_offset, rb, e0
    cdef Py_ssize_t li, ri, npieces
    cdef uint8_t* bp
    cdef dict ed, cd, rd
    cdef PyObject* v[7]
    if order > 5 or _hn(VBQ_H(co, "zero")):
        return False
    ed = _idict(eng)
    if ed is None:
        return False
    o_pos = _hk(VBQ_H(co, "pos"), co, "pos")
    o_rem = _hk(VBQ_H(co, "remaining"), co, "remaining")
    if type(o_pos) is not int or type(o_rem) is not int or o_pos < 0 or o_rem <= 0:
        return False
    pos = o_pos
    rem = o_rem if o_rem < INT_MAX else INT_MAX
    # the L2 slice (get_cluster_table: an allocated, COPIED, cached table)
    l1i = pos >> (g.l2_bits + cb)
    if l1i >= g.l1_size:
        return False
    l1t = _hv(VBQ_H(ed, "l1_table"), eng, "l1_table")
    o = (<list>l1t)[l1i]
    if type(o) is not int or o < 0:
        return False
    l1e = o
    l2_offset = l1e & L1E_OFFSET_MASK
    if not l1e & QCOW_OFLAG_COPIED or not l2_offset or l2_offset & <uint64_t>(cs - 1):
        return False
    l2i = (pos >> cb) & (g.l2_slice_size - 1)
    key = <long long>l2_offset + 8 * (((pos >> cb) & (g.l2_size - 1)) - l2i)
    l2c = _hv(VBQ_H(ed, "l2_cache"), eng, "l2_cache")
    cd = _idict(l2c)
    if cd is None or key % <long long>_hv(VBQ_H(cd, "table_size"), l2c, "table_size"):
        return False
    li = _lookup_l(_hv(VBQ_H(cd, "offsets"), l2c, "offsets"), key)
    if li < 0 or (<list>_hv(VBQ_H(cd, "ref"), l2c, "ref"))[li] != 0:
        return False
    table = (<list>_hv(VBQ_H(cd, "tables"), l2c, "tables"))[li]
    if type(table) is not bytearray or PyByteArray_GET_SIZE(table) != g.l2_slice_size * 8:
        return False
    oic = pos & (cs - 1)
    n = _min3((oic + rem + cs - 1) >> cb, g.l2_slice_size - l2i, BDRV_REQUEST_MAX_BYTES >> cb)
    e0 = _get(table, l2i)
    if e0 != 0:
        return _fast_in_place(m, eng, ed, bid, co, o_pos, o_rem, pos, rem, oic, n, e0, table, l2i, l2c,
                              cd, li)
    if _hv(VBQ_H(ed, "backing"), eng, "backing") is not None or _hv(VBQ_H(ed, "cache_discards"), eng, "cache_discards") or _hv(VBQ_H(ed, "discards"), eng, "discards"):
        return False
    k = 0
    while k < n and _get(table, l2i + k) == 0:
        k += 1
    kk = _count_single_write_clusters(eng, n, table, l2i, True)
    if kk != k or k * cs - oic < rem:
        return False                    # (more than one run: the loop goes on)
    cur = rem
    # the free clusters (alloc_clusters_noref over one cached refcount block)
    o = _hv(VBQ_H(ed, "free_cluster_index"), eng, "free_cluster_index")
    if type(o) is not int or o < 0:
        return False
    fci = o
    ti0 = fci >> rbb
    rts = _hv(VBQ_H(ed, "refcount_table_size"), eng, "refcount_table_size")
    if ti0 >= <long long>rts:
        return False
    rt = _hv(VBQ_H(ed, "refcount_table"), eng, "refcount_table")
    rb = (<tuple>rt)[ti0] if isinstance(rt, tuple) else rt[ti0]
    rb &= REFT_OFFSET_MASK
    if not rb or rb & <uint64_t>(cs - 1):
        return False
    rbc = _hv(VBQ_H(ed, "rb_cache"), eng, "rb_cache")
    rd = _idict(rbc)
    if rd is None or <long long>rb % <long long>_hv(VBQ_H(rd, "table_size"), rbc, "table_size"):
        return False
    ri = _lookup_l(_hv(VBQ_H(rd, "offsets"), rbc, "offsets"), <long long>rb)
    if ri < 0 or (<list>_hv(VBQ_H(rd, "ref"), rbc, "ref"))[ri] != 0:
        return False
    block = (<list>_hv(VBQ_H(rd, "tables"), rbc, "tables"))[ri]
    if type(block) is not bytearray or PyByteArray_GET_SIZE(block) != cs \
            or ((1LL << rbb) << order) > cs * 8:
        return False
    bp = <uint8_t*>PyByteArray_AS_STRING(block)
    idx = fci
    i = 0
    nchecks = 0
    while i < k:
        if (idx >> rbb) != ti0:
            return False                # (the scan leaves the block)
        nchecks += 1
        if _rc_get(bp, idx & ((1LL << rbb) - 1), order):
            idx += 1
            i = 0
            continue
        idx += 1
        i += 1
    if idx > 0 and idx - 1 > (QCOW_MAX_CLUSTER_OFFSET >> cb):
        return False
    alloc_first = idx - k
    off = alloc_first << cb
    host = off + oic
    if 1 > g.refcount_max:
        return False
    # the overlap checks it will make (no hit: nothing to do)
    if _cmo(ed, eng, 0, host, cur, l1t, rts, rt):
        return False
    ce_from = oic + cur
    ce_to = (ce_from + cs - 1) // cs * cs
    zn = ce_to                          # handle_alloc_space: cow_start..cow_end
    # (its check of off..off+zn is the one just made: check_metadata_overlap rounds host..
    # host+cur out to the same whole clusters, and host < cs exactly when off == 0)
    o_qoff = _hk(VBQ_H(co, "qoff"), co, "qoff")
    pieces = _hk(VBQ_H(co, "pieces"), co, "pieces")
    plan = _hv(VBQ_H(ed, "plan"), eng, "plan")
    if type(plan) is not list:
        return False
    # -- from here on: the changes ---------------------------------------------------------------
    # alloc_clusters_noref's get_refcount calls, update_refcount's block (dirty, +1 each)
    VBQ_HS(ed, "free_cluster_index", idx)
    (<list>_hv(VBQ_H(rd, "dirty"), rbc, "dirty"))[ri] = True
    for i in range(alloc_first, idx):
        _refcount_set(block, i & ((1LL << rbb) - 1), order, _rc_get(bp, i & ((1LL << rbb) - 1), order) + 1)
    _lru_bump_d(rd, rbc, ri, nchecks + 1)
    if not vbq_lone_empty_list(ed, "discards"):     # (else: an empty list for an empty list)
        ed["discards"] = []
    # handle_copied's and handle_alloc's L2 slice, then is_zero_fast's lookups of the COW areas
    nzget = 0
    if oic or ce_to - ce_from:
        a_off = pos - oic
        a_end = a_off + oic
        if a_end > g.size:
            a_end = g.size
        if a_off < a_end:
            nzget += 1
        a_off = pos - oic + ce_from
        a_end = a_off + ce_to - ce_from
        if a_end > g.size:
            a_end = g.size
        if a_off < a_end:
            nzget += 1
    _lru_bump_d(cd, l2c, li, 2 + nzget)
    # calculate_l2_meta (keep_old False, the first cluster unallocated: cow_start from 0), its
    # skip_cow as _write_task leaves it (True when the COW areas are zeroed)
    cdef object o_moff = pos & ~(cs - 1), o_aoff = off, o_nb = (ce_from + cs - 1) >> cb
    cdef object o_skip = True if oic or ce_to - ce_from else False
    o_cs = [0, oic]
    o_ce = [ce_from, ce_to - ce_from]
    v[0] = <PyObject*>o_moff
    v[1] = <PyObject*>o_aoff
    v[2] = <PyObject*>o_nb
    v[3] = <PyObject*>PY_FALSE
    v[4] = <PyObject*>o_cs
    v[5] = <PyObject*>o_ce
    v[6] = <PyObject*>o_skip
    cdef list metas = [_from_tpl(TPL_META, v, 7)]
    cdef object o_host = host, o_cur = cur
    piece = _new_piece(o_pos, o_host, o_cur, o_qoff, metas)
    _piece_done(co, piece, o_pos, o_rem, o_qoff, cur, &npieces)
    pending = _hv(VBQ_H(ed, "pending"), eng, "pending")
    if oic or ce_to - ce_from:
        _plan_zero_cow(plan, pending, off, zn)
        _plan_guest_write(m, plan, pending, bid, co, o_qoff, cur, host, o_cur, o_host, npieces)
        _grow_file_size_2(ed, eng, off + zn, host + cur)
    else:
        _plan_guest_write(m, plan, pending, bid, co, o_qoff, cur, host, o_cur, o_host, npieces)
        _grow_file_size_d(ed, eng, host + cur)
    _FAST_ALLOCS[0] += 1
    return True


cdef bint _fast_in_place(object m, object eng, dict ed, object bid, dict co, object o_pos, object o_rem,
                         long long pos, long long rem, long long oic, long long n, uint64_t e0, object table,
                         long long l2i, object l2c, dict cd, Py_ssize_t li) except -1:
    """_fast_alloc's other common path: the rest of the request is one run of COPIED data
    clusters (handle_copied: written in place, calculate_l2_meta keeps no meta), then the guest
    data write.  False, having changed nothing: not that path."""
    cdef Geo* g = _geo(eng)
    cdef long long cs = g.cluster_size, keep, nbc, i, host, cur
    cdef int cb = g.cluster_bits
    cdef uint64_t cluster_offset = e0 & L2E_OFFSET_MASK
    cdef Py_ssize_t npieces
    if _needs_new_alloc(e0) or cluster_offset & <uint64_t>(cs - 1):
        return False
    keep = _count_single_write_clusters(eng, n, table, l2i, False)
    if keep * cs - oic < rem:
        return False                    # (more than one run: the loop goes on)
    cur = rem
    nbc = (oic + cur + cs - 1) >> cb
    for i in range(nbc):
        if _ctype(_get(table, l2i + i)) != T_NORMAL:
            return False                # (preallocated zero clusters: a meta to link)
    host = <long long>cluster_offset + oic
    if _cmo(ed, eng, 0, host, cur, _MISSING, _MISSING, _MISSING):
        return False
    o_qoff = _hk(VBQ_H(co, "qoff"), co, "qoff")
    plan = _hv(VBQ_H(ed, "plan"), eng, "plan")
    if type(plan) is not list:
        return False
    # -- the changes: handle_copied's L2 slice, the piece, the guest data write
    _lru_bump_d(cd, l2c, li, 1)
    cdef object o_host = host, o_cur = cur
    piece = _new_piece(o_pos, o_host, o_cur, o_qoff, [])
    _piece_done(co, piece, o_pos, o_rem, o_qoff, cur, &npieces)
    _plan_guest_write(m, plan, _hv(VBQ_H(ed, "pending"), eng, "pending"), bid, co, o_qoff, cur, host, o_cur,
                      o_host, npieces)
    _grow_file_size_d(ed, eng, host + cur)
    _FAST_ALLOCS[1] += 1
    return True


def fast_allocs(bint reset=False, bint in_place=False, bint flushes=False):
    """How many write steps _fast_alloc ran natively since the last reset (in_place: of
    clusters written in place; else: of new clusters; flushes: how many flush phases
    bulk_compute ran instead)"""
    n = _FAST_ALLOCS[2 if flushes else 1 if in_place else 0]
    if reset:
        _FAST_ALLOCS[0] = 0
        _FAST_ALLOCS[1] = 0
        _FAST_ALLOCS[2] = 0
    return n


cdef str _write_machine(object m, object eng, object bid, dict co, bint quiet=False):
    """driver._write_machine (quiet: no detail, the function named in _qfn instead of m.cur)"""
    global _qfn
    cdef long long host, cur, pos, rem
    cdef list metas, pieces
    cdef dict piece, mt
    wphase = _hk(VBQ_H(co, "wphase"), co, "wphase")
    if _is_str(wphase, S_ALLOC):
        if _hk(VBQ_H(co, "remaining"), co, "remaining") == 0:
            VBQ_HS(co, "wphase", S_LINK)
            return "every piece allocated and written: link the L2 entries"
        if quiet:
            _qfn = S_ALLOC_HOST_OFFSET
            if _fast_alloc(m, eng, bid, co):
                return None
        else:
            _SUP.set_function(m, "qcow2_alloc_host_offset", CLUSTER_SRC)
        pos = co["pos"]
        rem = co["remaining"]
        metas = []
        host = _alloc_host_offset(eng, pos, rem if rem < INT_MAX else INT_MAX, &cur, metas)
        piece = {"guest": pos, "host": host, "bytes": cur, "qoff": co["qoff"], "metas": metas,
                 "failed": False}
        co["pieces"].append(piece)
        co["pos"] += cur
        co["remaining"] -= cur
        co["qoff"] += cur
        _pre_write_overlap_check(eng, 0, host, cur)
        _write_task(m, eng, bid, co, piece)
        if quiet:
            return None
        what = ", ".join([f"{mt['nb_clusters']} new cluster(s) at {_hex(mt['alloc_offset'])}"
                          for mt in metas if not mt["keep_old"]]) or "in place (COPIED clusters)"
        return f"guest {_hexll(pos)}+{_hexll(cur)} -> host {_hexll(host)}: {what}"
    if _is_str(wphase, S_LINK):
        if quiet:
            _qfn = S_LINK_L2
        else:
            _SUP.set_function(m, "qcow2_alloc_cluster_link_l2", CLUSTER_SRC)
        pieces = _hk(VBQ_H(co, "pieces"), co, "pieces")
        link_i = _hk(VBQ_H(co, "link_i"), co, "link_i")
        if link_i >= len(pieces):
            VBQ_HS(co, "wphase", S_DONE)
            return "all L2 entries linked"
        piece = pieces[link_i]
        VBQ_HS(co, "link_i", link_i + 1)
        if _hk(VBQ_H(piece, "failed"), piece, "failed") or _hk(VBQ_H(co, "ret"), co, "ret"):
            for mt in _hk(VBQ_H(piece, "metas"), piece, "metas"):
                eng.alloc_cluster_abort(mt)
            if quiet:
                return None
            return f"piece at guest {_hex(piece['guest'])}: the write failed, qcow2_alloc_cluster_abort frees its clusters"
        n = 0
        for mt in _hk(VBQ_H(piece, "metas"), piece, "metas"):
            cs, ce = _hk(VBQ_H(mt, "cow_start"), mt, "cow_start"), _hk(VBQ_H(mt, "cow_end"), mt, "cow_end")
            if (cs[1] or ce[1]) and not _hk(VBQ_H(mt, "skip_cow"), mt, "skip_cow"):
                _perform_cow(m, bid, co, piece, mt)
            _alloc_cluster_link_l2(eng, mt)
        if quiet:
            return None
        for mt in piece["metas"]:
            n += mt["nb_clusters"]
        return (f"piece at guest {_hex(piece['guest'])}: {n} L2 entr{'y' if n == 1 else 'ies'} "
                "point at the new clusters (COPIED)" if n else
                f"piece at guest {_hex(piece['guest'])}: nothing to link")
    raise AssertionError(wphase)


cdef str _write_phase(object m, object eng, object bid, dict co, bint quiet=False):
    """driver._write_phase"""
    detail = _write_machine(m, eng, bid, co, quiet)
    if _is_str(_hk(VBQ_H(co, "wphase"), co, "wphase"), S_DONE):
        VBQ_HS(co, "phase", S_DONE)
    return detail


cdef str _read_phase(object m, object eng, object bid, dict co, bint quiet=False):
    """driver._read_phase (quiet: no detail, the function named in _qfn instead of m.cur); the
    mapping is _gho's (its cluster type as a T_* code, the host offset and length in C), the
    Python method's for a misaligned L2 table"""
    global _qfn
    cdef long long a, r, c
    cdef uint64_t h, e
    cdef int t
    rem = _hk(VBQ_H(co, "remaining"), co, "remaining")
    if rem == 0:
        VBQ_HS(co, "phase", S_DONE)
        return "read complete"
    if quiet:
        _qfn = S_GET_HOST_OFFSET
    else:
        _SUP.set_function(m, "qcow2_get_host_offset", CLUSTER_SRC)
    pos = _hk(VBQ_H(co, "pos"), co, "pos")
    a = pos                             # (as get_host_offset's arguments convert)
    r = rem if rem < INT_MAX else INT_MAX
    t = _gho(eng, a, r, &h, &c, &e)
    if t == T_PY:
        tn, o_h, o_c, o_e = Qcow2Engine.get_host_offset(eng, a, r)
        t = TNAME.index(tn)
        h = o_h
        c = o_c
        e = o_e
    if c < 1:
        c = 1
    cdef object o_cur = c
    reqs = _m_reqs(m)
    if type(reqs) is dict:              # (reqs.get(bid, {}) without the {} when bid is there)
        rq = PyDict_GetItemWithError(reqs, bid)
        if rq == NULL and PyErr_Occurred():
            vbq_err()
        req = <object>rq if rq != NULL else {}
    else:
        req = reqs.get(bid, {})
    iov = _hk(VBQ_H(req, "qiov"), req, "qiov") if type(req) is dict else req["qiov"]
    qoff = _hk(VBQ_H(co, "qoff"), co, "qoff")
    seg = _iov_slice(iov, qoff, c)
    cdef long long k
    if 0 <= a < (1LL << 62):            # (co["pos"] += cur, of the values just read)
        VBQ_HS(co, "pos", a + c)
    else:
        VBQ_HS(co, "pos", pos + o_cur)
    if _ll(rem, &k) and 0 <= k < (1LL << 62):
        VBQ_HS(co, "remaining", k - c)
    else:
        VBQ_HS(co, "remaining", rem - o_cur)
    if _ll(qoff, &k) and 0 <= k < (1LL << 62):
        VBQ_HS(co, "qoff", k + c)
    else:
        VBQ_HS(co, "qoff", qoff + o_cur)
    if t == T_ZERO_PLAIN or t == T_ZERO_ALLOC or (t == T_UNALLOCATED and _fmt_backing(m) is None):
        _plan_read(eng, S_GUEST_ZERO, S_MEMSET, _s_read_zero(pos, o_cur, TNAME[t]), pos, o_cur, seg, None)
        if quiet:
            return None
        return f"guest {_hex(pos)}+{_hex(o_cur)}: {TNAME[t]} cluster(s)"
    if t == T_UNALLOCATED:
        _io(eng, "backing_read", "bdrv_co_preadv_part", f"guest {_hex(pos)}+{_hex(o_cur)} from the backing file",
            pos, None, o_cur, {"iov": seg})
        return f"guest {_hex(pos)}+{_hex(o_cur)}: unallocated, read the backing file"
    if t == T_COMPRESSED:
        entry = e
        o_h, csize = _L.compressed_params(entry, _geo(eng).cluster_bits)
        _io(eng, "compressed_read", "qcow2_co_preadv_compressed",
            f"inflate the compressed cluster at host {_hex(o_h)} ({csize} bytes)", o_h, None, csize,
            {"iov": seg, "entry": entry, "guest": pos})
        return f"guest {_hex(pos)}+{_hex(o_cur)}: compressed cluster at host {_hex(o_h)}"
    host = h
    _plan_read(eng, S_GUEST_READ, S_PREADV_PART, _s_read_host(pos, o_cur, host), host, o_cur, seg, S_DATA)
    if quiet:
        return None
    return f"guest {_hex(pos)}+{_hex(o_cur)} -> host {_hex(host)}"


cdef inline object _fmt_backing(object m):
    """m.fmt.backing (the format's instance attribute: see the check below)"""
    f = sget(m, _Machine, _QM[1], "fmt")
    return _hv(VBQ_GA(f, "backing"), f, "backing")


cdef str S_GUEST_ZERO = "guest_zero"
cdef str S_MEMSET = "qemu_iovec_memset"
cdef str S_GUEST_READ = "guest_read"
cdef str S_PREADV_PART = "bdrv_co_preadv_part"
cdef dict TPL_RZERO = {"op": None, "fn": None, "what": None, "offset": None, "length": None,
                       "iov": None}                                 # io(..., length=, iov=)
cdef dict TPL_RDATA = {"op": None, "fn": None, "what": None, "offset": None, "length": None,
                       "iov": None, "kind": None}                   # io(..., length=, iov=, kind=)

# vbq_tpl_new copies a template's keys table: on when each template's table has the size it
# computes (as dict.__sizeof__ counts it)
_TPL_NEW = all(vbq_tpl_size_ok(_t, _t.__sizeof__())
               for _t in (TPL_META, TPL_PIECE, TPL_ZERO, TPL_GWRITE, TPL_RZERO, TPL_RDATA))


cdef int _plan_read(object eng, str op, str fn, str what, object offset, object length, object seg,
                    object kind) except -1:
    """Qcow2Engine.io(op, fn, what, offset, length=length, iov=seg) of a read phase's item (no
    data: nothing pending), kind=kind after iov when kind is not None"""
    cdef PyObject* v[7]
    v[0] = <PyObject*>op
    v[1] = <PyObject*>fn
    v[2] = <PyObject*>what
    v[3] = <PyObject*>offset
    v[4] = <PyObject*>length
    v[5] = <PyObject*>seg
    v[6] = <PyObject*>kind
    item = _from_tpl(TPL_RZERO, v, 6) if kind is None else _from_tpl(TPL_RDATA, v, 7)
    _hv(VBQ_GA(eng, "plan"), eng, "plan").append(item)
    return 0


cdef int _pguest(char* buf, long long pos, long long cur) noexcept:
    """f"guest {pos:#x}+{cur:#x}" at buf; its length"""
    cdef int k = _pcs(buf, "guest ", 6)
    k += _phexll(buf + k, pos)
    buf[k] = 43        # '+'
    k += 1
    return k + _phexll(buf + k, cur)


cdef str _s_read_zero(object pos, object cur, object t):
    """f"guest {pos:#x}+{cur:#x} reads as zero ({t})" (_read_phase)"""
    cdef char buf[160]
    cdef long long a, b
    cdef int k
    cdef Py_ssize_t n
    if not (_ll(pos, &a) and _ll(cur, &b)) or type(t) is not str or not PyUnicode_IS_ASCII(t) \
            or PyUnicode_GET_LENGTH(t) > 64:
        return f"guest {_hex(pos)}+{_hex(cur)} reads as zero ({t})"
    k = _pguest(buf, a, b)
    k += _pcs(buf + k, " reads as zero (", 16)
    n = PyUnicode_GET_LENGTH(t)
    memcpy(buf + k, PyUnicode_DATA(t), <size_t>n)
    k += <int>n
    buf[k] = 41        # ')'
    return _ascii(buf, k + 1)


cdef str _s_read_host(object pos, object cur, object host):
    """f"guest {pos:#x}+{cur:#x} <- host {host:#x}" (_read_phase)"""
    cdef char buf[96]
    cdef long long a, b, h
    cdef int k
    if not (_ll(pos, &a) and _ll(cur, &b) and _ll(host, &h)):
        return f"guest {_hex(pos)}+{_hex(cur)} <- host {_hex(host)}"
    k = _pguest(buf, a, b)
    k += _pcs(buf + k, " <- host ", 9)
    return _ascii(buf, k + _phexll(buf + k, h))


cdef str _compute(object m, object f, object eng, object bid):
    """driver._compute"""
    cdef dict co = f.cos[bid]
    if co["phase"] == "done":
        _finish(m, bid)
        return f"request done ({_errname(co['ret'])}), s->lock released"
    _sa(eng, "plan", [])
    op = co["op"]
    try:
        if op == "write":
            detail = _write_phase(m, eng, bid, co)
        elif op == "read":
            detail = _read_phase(m, eng, bid, co)
        else:
            detail = PHASES[op](m, bid, co)
    except Qcow2Error as e:
        _failed(m, co, e)
        detail = f"fails: {e}"
    plan = _take_plan(eng, co)
    if plan:
        sched_cont(m.sim, "qcow2.io", (bid,))
        return detail + f"; {len(plan)} host I/O(s) planned"
    if co["phase"] == "done":
        _finish(m, bid)
        return detail + f"; request done ({_errname(co['ret'])}), s->lock released"
    sched_cont(m.sim, "qcow2.compute", (bid,))
    return detail


def q_compute(m, bid):
    """driver.compute"""
    f = m.fmt
    eng = _fast_engine(f)
    if type(eng) is not _FastQcow2Engine:        # a subclass of the engine: its own methods
        return _Q.compute(m, bid)
    _geo(eng)
    detail = _compute(m, f, eng, bid)
    co = f.cos.get(bid)
    if co is not None and m.cur is not None:
        co["caller"] = m.cur.function
    return detail


cdef str S_ALLOC_HOST_OFFSET = "qcow2_alloc_host_offset"     # (the compute step's own function)
cdef str S_LINK_L2 = "qcow2_alloc_cluster_link_l2"
cdef str S_GET_HOST_OFFSET = "qcow2_get_host_offset"
cdef str _qfn = S_ALLOC_HOST_OFFSET     # the function a quiet phase named (Machine.set_function)
cdef str S_WRITE = "write"
cdef str S_READ = "read"
cdef str S_DONE = "done"
cdef str S_ALLOC = "alloc"
cdef str S_LINK = "link"


cdef inline bint _is_str(object o, str s) except -1:
    """o == s, for a str s"""
    cdef int r = vbq_str_eq(o, s)
    if r >= 0:
        return r
    return o == s


cdef int _failed(m, dict co, e) except -1:
    """driver.compute's Qcow2Error: the request ends with its errno, an error effect."""
    co["ret"] = e.errno
    co["phase"] = S_DONE
    m.log.add(("error", str(e), "qcow2"))
    return 0


cdef object _take_plan(eng, dict co):
    """driver.compute: the phase's plan becomes the request's, the engine's starts empty.
    (An empty plan that nothing else refers to stays the engine's, and the request takes a new
    empty list: two empty lists, each referred to once, either way.)"""
    cdef dict ed = _idict(eng)
    if ed is not None and vbq_lone_empty_list(ed, "plan"):
        VBQ_HS(co, "plan", [])
        plan = None
    elif ed is not None:
        plan = _hv(VBQ_H(ed, "plan"), eng, "plan")
        VBQ_HS(co, "plan", plan)
        VBQ_HS(ed, "plan", [])
    else:
        plan = _hv(VBQ_GA(eng, "plan"), eng, "plan")
        co["plan"] = plan
        _sa(eng, "plan", [])
    if not vbq_is(co, "pi", 0):
        VBQ_HS(co, "pi", 0)
    return plan


def bulk_compute(m, eng, dict co, bid):
    """driver.compute (and _compute) for a read, write or flush phase, keeping no record (the
    bulk core, emu_fast/_bulk_blk.pyx h_qcow2_compute, after its begin, calls _bulk_compute
    itself through BULK_COMPUTE_C): no detail, no set_function (the function it would name
    goes to co["caller"]).  The caller checked that the engine is a FastQcow2Engine and the
    request a read, write or flush that is not done.  -> 1: cont qcow2.io, 2: _finish, 3: cont
    qcow2.compute (the caller steers the scheduler)"""
    return _bulk_compute(m, eng, co, bid)


cdef int _bulk_compute(object m, object eng, dict co, object bid) except -1:
    """bulk_compute"""
    global _qfn
    op = _hk(VBQ_H(co, "op"), co, "op")
    ph = _hk(VBQ_H(co, "phase"), co, "phase")
    cdef bint write = _is_str(op, S_WRITE)
    cdef bint flush = not write and _is_str(op, S_FLUSH)
    if type(eng) is not _FastQcow2Engine or _is_str(ph, S_DONE) \
            or not (write or flush or _is_str(op, S_READ)):
        raise RuntimeError("bulk_compute: not a read, write or flush phase of a FastQcow2Engine")
    _geo(eng)
    _qfn = S_ALLOC_HOST_OFFSET
    cdef dict ed = _idict(eng)
    cdef int outer = vbq_step_set(1)    # (its stores: vbq_hset)
    try:
        if ed is None:
            _sa(eng, "plan", [])
        elif not vbq_lone_empty_list(ed, "plan"):     # (else: [] for an empty list)
            VBQ_HS(ed, "plan", [])
        try:
            if write:
                _write_phase(m, eng, bid, co, True)
            elif flush:
                _flush_phase(eng, co)
            else:
                _read_phase(m, eng, bid, co, True)
        except Qcow2Error as e:
            _failed(m, co, e)
        plan = _take_plan(eng, co)
        return _steer(co, plan)
    finally:
        vbq_step_set(outer)


# bulk_compute for the bulk core, called in C; the capsule's name carries the signature, which
# _bulk_blk checks before it takes the pointer (a changed signature there falls back to the Python call)
BULK_COMPUTE_C = PyCapsule_New(<void*>_bulk_compute, "emu_fast._qcow2.bulk_compute: int (object m, object eng, dict co, object bid) except -1", NULL)


# == the flush phase, quiet ============================================================================
cdef str S_FLUSH = "flush"
cdef str S_WRITE_CACHES = "qcow2_write_caches"
cdef str S_FLUSH_CHILDREN = "bdrv_co_flush(file): flush the children"
cdef str S_CACHE_ENTRY_FLUSH = "qcow2_cache_entry_flush"
cdef str S_REFCOUNT = "refcount"
cdef str S_L2 = "l2"
# the methods the flush phase runs, as the engine's module (and FastQcow2Engine: io,
# pre_write_overlap_check) define them: compiled below while FastQcow2Engine still finds these
cdef tuple _FLUSH_METHODS = tuple((_n, FastQcow2Engine.__dict__.get(_n) or Qcow2Engine.__dict__[_n]) for _n in
                                  ("write_caches", "need_accurate_refcounts", "cache_write",
                                   "cache_entry_flush", "_cname", "bdrv_flush", "cache_flush",
                                   "cache_flush_dependency", "cache", "io",
                                   "pre_write_overlap_check"))


cdef bint _flush_methods_plain() except -1:
    """FastQcow2Engine's methods of the flush phase are the engine module's own"""
    cdef PyObject* f
    for n, fn in _FLUSH_METHODS:
        f = _PyType_Lookup(_FastQcow2Engine, n)
        if f == NULL or <object>f is not fn:
            return False
    return True


cdef int _flush_phase(object eng, dict co) except -1:
    """driver._flush_phase, quiet (the function it names goes to _qfn): qcow2_write_caches, then
    bdrv_flush of the file (the engine's methods compiled below while FastQcow2Engine's are the
    engine module's own and this module's, else called)"""
    global _qfn
    _qfn = S_WRITE_CACHES
    _FAST_ALLOCS[2] += 1
    co["phase"] = S_DONE
    if not _flush_methods_plain():
        eng.write_caches()
        eng.bdrv_flush(S_FLUSH_CHILDREN)
        return 0
    _cache_write(eng, _ga(eng, "l2_cache"))                  # Qcow2Engine.write_caches
    if not (_ga(eng, "incompatible_features") & INCOMPAT_DIRTY):    # (need_accurate_refcounts)
        _cache_write(eng, _ga(eng, "rb_cache"))
    _bdrv_flush(eng, S_FLUSH_CHILDREN)
    return 0


cdef inline str _cname(object c):
    """Qcow2Engine._cname"""
    return "L2 table" if _ga(c, "name") == S_L2 else "refcount block"


cdef int _cache_write(object eng, object c) except -1:
    """Qcow2Engine.cache_write"""
    cdef Py_ssize_t i, n = _ga(c, "size")
    for i in range(n):
        _cache_entry_flush(eng, c, i)
    return 0


cdef int _cache_entry_flush(object eng, object c, Py_ssize_t i) except -1:
    """Qcow2Engine.cache_entry_flush"""
    if not _ga(c, "dirty")[i] or not _ga(c, "offsets")[i]:
        return 0
    if _ga(c, "depends"):
        _cache_flush_dependency(eng, c)
    elif _ga(c, "depends_on_flush"):
        _bdrv_flush(eng, _cname(c) + " cache depends on a flush (COW data must be stable)")
        _sa(c, "depends_on_flush", False)
    _pre_write_overlap_check(eng, OL_REFCOUNT_BLOCK if _ga(c, "name") == S_REFCOUNT else OL_ACTIVE_L2,
                             _ga(c, "offsets")[i], _ga(c, "table_size"))
    off = _ga(c, "offsets")[i]
    what = _cname(c) + " @" + _hex(off)
    data = bytes(_ga(c, "tables")[i])
    _io(eng, "write", S_CACHE_ENTRY_FLUSH, what, off, data, 0,
        {"kind": "l2" if _ga(c, "name") == S_L2 else "refcount-block"})
    _ga(c, "dirty")[i] = False
    return 0


cdef int _cache_flush(object eng, object c) except -1:
    """Qcow2Engine.cache_flush"""
    _cache_write(eng, c)
    _bdrv_flush(eng, "qcow2_cache_flush(" + _cname(c) + " cache)")
    return 0


cdef int _cache_flush_dependency(object eng, object c) except -1:
    """Qcow2Engine.cache_flush_dependency"""
    dep = _ga(c, "depends")
    _cache_flush(eng, _ga(eng, "l2_cache") if dep == S_L2 else _ga(eng, "rb_cache"))   # (self.cache)
    _sa(c, "depends", "")
    _sa(c, "depends_on_flush", False)
    return 0


cdef int _bdrv_flush(object eng, str why) except -1:
    """Qcow2Engine.bdrv_flush"""
    return _io(eng, S_FLUSH, "bdrv_flush", why, 0, None, 0, None)


cdef int _steer(dict co, object plan) except -1:
    """bulk_compute's answer after _take_plan (and co["caller"])"""
    if plan:
        if not vbq_is(co, "caller", _qfn):
            VBQ_HS(co, "caller", _qfn)
        return 1
    if _is_str(_hk(VBQ_H(co, "phase"), co, "phase"), S_DONE):
        return 2
    if not vbq_is(co, "caller", _qfn):
        VBQ_HS(co, "caller", _qfn)
    return 3


HANDLERS = {
    "qcow2.compute": (q_compute, _Q.compute),
}
