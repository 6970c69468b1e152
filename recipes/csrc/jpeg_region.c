/* splathead._jpeg: decode a rectangle of a JPEG with libjpeg-turbo, and nothing below it.
 *
 * A training crop covers on average about half of a photo; decoding the photo whole spends the
 * other half of the inverse DCT, the colour conversion and, below the crop, the entropy
 * decoding on pixels that are thrown away. libjpeg-turbo's partial decompression skips them:
 * jpeg_crop_scanline() narrows the columns (to whole iMCUs), jpeg_skip_scanlines() passes over
 * the rows above, and the decoder stops after the last row wanted. The pixels it returns are
 * those of a full decode at the same scale.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <setjmp.h>
#include <stdio.h>
#include <string.h>
#include <jpeglib.h>

typedef struct {
    struct jpeg_error_mgr pub;
    jmp_buf jump;
} ErrorManager;

static void error_exit(j_common_ptr cinfo) { longjmp(((ErrorManager *)cinfo->err)->jump, 1); }

/* Warnings are counted by libjpeg (num_warnings) and answered with None, never printed. */
static void output_message(j_common_ptr cinfo) { (void)cinfo; }

PyDoc_STRVAR(decode_region_doc,
"decode_region(data, reduction, top, left, height, width, /)\n--\n\n"
"Rows ``top:top+height``, columns ``left:left+width`` of a JPEG decoded at ``1/reduction`` of\n"
"its size (1, 2, 4 or 8): row-major ``[height width 3]`` uint8 RGB, the pixels a full decode\n"
"at that scale gives. Coordinates are in the reduced image, whose size is the full size divided\n"
"by ``reduction``, rounded up.\n\n"
"Returns None where libjpeg cannot read the data, its colour space is neither YCbCr nor\n"
"greyscale, or libjpeg warns about anything it read. Raises ValueError for a region outside\n"
"the reduced image.");

static PyObject *decode_region(PyObject *module, PyObject *args) {
    Py_buffer data;
    int reduction, top, left, height, width;
    (void)module;
    if (!PyArg_ParseTuple(args, "y*iiiii:decode_region", &data, &reduction, &top, &left, &height,
                          &width))
        return NULL;
    if (reduction != 1 && reduction != 2 && reduction != 4 && reduction != 8) {
        PyBuffer_Release(&data);
        return PyErr_Format(PyExc_ValueError, "reduction must be 1, 2, 4 or 8, got %d", reduction);
    }
    if (top < 0 || left < 0 || height <= 0 || width <= 0) {
        PyBuffer_Release(&data);
        return PyErr_Format(PyExc_ValueError,
                            "region needs top, left >= 0 and height, width > 0, got top=%d "
                            "left=%d height=%d width=%d", top, left, height, width);
    }

    struct jpeg_decompress_struct cinfo;
    ErrorManager error;
    PyObject *volatile pixels = NULL;
    JSAMPROW volatile row = NULL;
    PyThreadState *volatile released = NULL;
    cinfo.err = jpeg_std_error(&error.pub);
    error.pub.error_exit = error_exit;
    error.pub.output_message = output_message;
    jpeg_create_decompress(&cinfo);
    if (setjmp(error.jump)) {
        if (released) PyEval_RestoreThread(released);
        PyMem_RawFree(row);
        jpeg_destroy_decompress(&cinfo);
        Py_XDECREF(pixels);
        PyBuffer_Release(&data);
        Py_RETURN_NONE;
    }
    jpeg_mem_src(&cinfo, (const unsigned char *)data.buf, (unsigned long)data.len);
    jpeg_read_header(&cinfo, TRUE);
    if (cinfo.jpeg_color_space != JCS_YCbCr && cinfo.jpeg_color_space != JCS_GRAYSCALE)
        longjmp(error.jump, 1);
    cinfo.out_color_space = JCS_RGB;
    cinfo.scale_num = 1;
    cinfo.scale_denom = (unsigned int)reduction;
    jpeg_calc_output_dimensions(&cinfo);
    if ((JDIMENSION)top + (JDIMENSION)height > cinfo.output_height ||
        (JDIMENSION)left + (JDIMENSION)width > cinfo.output_width) {
        PyErr_Format(PyExc_ValueError,
                     "region rows %d:%d, columns %d:%d lie outside the %ux%u image (reduction %d)",
                     top, top + height, left, left + width, cinfo.output_height,
                     cinfo.output_width, reduction);
        jpeg_destroy_decompress(&cinfo);
        PyBuffer_Release(&data);
        return NULL;
    }

    released = PyEval_SaveThread();
    jpeg_start_decompress(&cinfo);
    /* A column or two beyond the region on either side, where the image has them: fancy chroma
     * upsampling replicates the edge columns of what it decodes, so the region's own edge
     * columns come out as a full decode has them only with a neighbour decoded beside them. */
    JDIMENSION region_left = left > 0 ? (JDIMENSION)left - 1 : 0;
    JDIMENSION region_right = (JDIMENSION)(left + width) + 2;
    if (region_right > cinfo.output_width) region_right = cinfo.output_width;
    JDIMENSION region_width = region_right - region_left;
    jpeg_crop_scanline(&cinfo, &region_left, &region_width);
    PyEval_RestoreThread(released);
    released = NULL;
    /* Each row is decoded whole into `row`, and the region's part copied out. */
    size_t row_bytes = (size_t)region_width * 3, out_bytes = (size_t)width * 3;
    size_t skip_bytes = ((size_t)left - region_left) * 3;
    pixels = PyByteArray_FromStringAndSize(NULL, (Py_ssize_t)(out_bytes * (size_t)height));
    row = PyMem_RawMalloc(row_bytes);
    if (pixels == NULL || row == NULL) {
        jpeg_destroy_decompress(&cinfo);
        Py_XDECREF(pixels);
        PyMem_RawFree(row);
        PyBuffer_Release(&data);
        return PyErr_NoMemory();
    }
    char *out = PyByteArray_AS_STRING(pixels);

    released = PyEval_SaveThread();
    if (top > 0) jpeg_skip_scanlines(&cinfo, (JDIMENSION)top);
    for (int y = 0; y < height; y++, out += out_bytes) {
        JSAMPROW rows[1] = {row};
        jpeg_read_scanlines(&cinfo, rows, 1);
        memcpy(out, row + skip_bytes, out_bytes);
    }
    int warnings = (int)error.pub.num_warnings;
    jpeg_destroy_decompress(&cinfo);  /* stops here: the rows below are never decoded */
    PyEval_RestoreThread(released);
    released = NULL;
    PyMem_RawFree(row);
    PyBuffer_Release(&data);
    if (warnings > 0) {
        Py_DECREF(pixels);
        Py_RETURN_NONE;
    }
    return pixels;
}

static PyMethodDef methods[] = {
    {"decode_region", decode_region, METH_VARARGS, decode_region_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "splathead._jpeg",
    .m_doc = "Partial JPEG decoding with libjpeg-turbo (see decode_region).",
    .m_size = -1,
    .m_methods = methods,
};

PyMODINIT_FUNC PyInit__jpeg(void) { return PyModule_Create(&module); }
