/* One frame to many sockets, with the GIL released once for the whole share.

   Why by hand: a fan-out is one send() per subscriber, ~10 us each on loopback. From
   Python every os.write() releases and re-takes the GIL, and with several writer threads
   each re-take is a futex sleep and wake-up (measured: 11 us per write alone, 12-15 us
   with 3 threads). No library sends one buffer to many sockets in one call (writev and
   sendmmsg take one socket), so this loop is the smallest piece that removes the GIL from
   the fan-out: the threads of surge.realtime.fanout then send truly in parallel.

   send_many(fds, frame, start, stop) -> list of (index, sent) for every fd in
   fds[start:stop] (a buffer of C ints, e.g. array('i')) that took less than the whole
   frame: sent is 0 when its socket buffer was full. Sockets that fail otherwise (reset,
   closed) are skipped: their transports find out on their own, as with os.write. */

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <errno.h>
#include <stdlib.h>
#include <sys/socket.h>

typedef struct {
    Py_ssize_t index;
    Py_ssize_t sent;
} short_send;

static PyObject *
send_many(PyObject *module, PyObject *args)
{
    Py_buffer fds, frame;
    Py_ssize_t start, stop;
    if (!PyArg_ParseTuple(args, "y*y*nn", &fds, &frame, &start, &stop))
        return NULL;
    PyObject *result = NULL;
    short_send *shorts = NULL;
    Py_ssize_t count = fds.len / (Py_ssize_t)sizeof(int), nshort = 0;
    if (fds.itemsize != (Py_ssize_t)sizeof(int)) {
        PyErr_SetString(PyExc_TypeError, "fds must be a buffer of C ints (array('i'))");
        goto done;
    }
    if (start < 0 || stop > count || start > stop) {
        PyErr_SetString(PyExc_IndexError, "start/stop outside the fds buffer");
        goto done;
    }
    /* at most one short send per socket: allocated up front, with the GIL held */
    shorts = PyMem_RawMalloc((size_t)(stop - start + 1) * sizeof(short_send));
    if (shorts == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    const int *fd = (const int *)fds.buf;
    const char *data = frame.buf;
    Py_ssize_t size = frame.len;

    Py_BEGIN_ALLOW_THREADS
    for (Py_ssize_t i = start; i < stop; i++) {
        ssize_t sent;
        do {
            /* MSG_NOSIGNAL: a closed peer is an EPIPE here, never a signal */
            sent = send(fd[i], data, (size_t)size, MSG_DONTWAIT | MSG_NOSIGNAL);
        } while (sent < 0 && errno == EINTR);
        if (sent == size)
            continue;
        if (sent >= 0) {
            shorts[nshort].index = i;
            shorts[nshort++].sent = sent;
        } else if (errno == EAGAIN || errno == EWOULDBLOCK) {
            shorts[nshort].index = i;
            shorts[nshort++].sent = 0;
        }
    }
    Py_END_ALLOW_THREADS

    result = PyList_New(nshort);
    if (result == NULL)
        goto done;
    for (Py_ssize_t k = 0; k < nshort; k++) {
        PyObject *item = Py_BuildValue("(nn)", shorts[k].index, shorts[k].sent);
        if (item == NULL) {
            Py_CLEAR(result);
            goto done;
        }
        PyList_SET_ITEM(result, k, item);
    }
done:
    PyMem_RawFree(shorts);
    PyBuffer_Release(&fds);
    PyBuffer_Release(&frame);
    return result;
}

static PyMethodDef methods[] = {
    {"send_many", send_many, METH_VARARGS,
     "send_many(fds, frame, start, stop) -> [(index, sent), ...] for the short sends"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "surge.realtime._sendmany", NULL, -1, methods,
};

PyMODINIT_FUNC
PyInit__sendmany(void)
{
    return PyModule_Create(&module);
}
