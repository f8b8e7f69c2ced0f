/* addcam: what a VMS's "add device" does, through Debian's libonvif 1.4.4 (libonvif-dev), against a
 * device given by its address. onvif-util, the tool that comes with libonvif, finds devices only by
 * WS-Discovery multicast, which tests must not send; this client skips discovery and fills OnvifData
 * from the address instead, as prepareOnvifData would from a discovery answer.
 *
 *   addcam DEVICE_SERVICE_URL USER PASSWORD [REQUEST_FILE]
 *
 * The sequence: GetSystemDateAndTime (getTimeOffset: the clock offset every token is made with),
 * GetCapabilities, GetDeviceInformation, GetProfiles (the first profile's token), GetProfile,
 * GetStreamUri, GetSnapshotUri. Prints one JSON line with what it got, or the step that failed and
 * libonvif's error text (last_error: a fault's subcode such as "ter:NotAuthorized", or "No XML
 * reply"); exits 0 only when every step succeeded. REQUEST_FILE: the GetSnapshotUri request's bytes
 * (HTTP head and SOAP body, its WS-Security token included) are written there, so that a test can
 * replay libonvif's own token from another address.
 *
 * Built by tests/test_onvif_libonvif.py into a temporary folder; nothing built is committed.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <libxml/tree.h>
#include <onvif.h>

/* libonvif exports these, but 1.4.4's onvif.h has their declarations commented out (they take
 * libxml2's types); the signatures are the ones in its onvif.c. */
xmlDocPtr sendCommandToCamera(char *cmd, char *xaddrs);
void addUsernameDigestHeader(xmlNodePtr root, xmlNsPtr ns_env, char *user, char *password, time_t offset);
void addHttpHeader(xmlDocPtr doc, xmlNodePtr root, char *xaddrs, char *post_type, char cmd[], int cmd_length);
int checkForXmlErrorMsg(xmlDocPtr doc, char error_msg[1024]);
int getXmlValue(xmlDocPtr doc, xmlChar *xpath, char buf[], int buf_length);

static const char *request_file = NULL;

/* 1.4.4 has no getSnapshotUri: this is its getStreamUri with the snapshot operation, built and sent by
 * libonvif's own helpers (the same token, HTTP head and reply parsing as every other call). */
static int get_snapshot_uri(struct OnvifData *d, char uri[1024]) {
    int result = 0;
    xmlDocPtr doc = xmlNewDoc(BAD_CAST "1.0");
    xmlNodePtr root = xmlNewDocNode(doc, NULL, BAD_CAST "Envelope", NULL);
    xmlDocSetRootElement(doc, root);
    xmlNsPtr ns_env = xmlNewNs(root, BAD_CAST "http://www.w3.org/2003/05/soap-envelope", BAD_CAST "SOAP-ENV");
    xmlNsPtr ns_trt = xmlNewNs(root, BAD_CAST "http://www.onvif.org/ver10/media/wsdl", BAD_CAST "trt");
    xmlSetNs(root, ns_env);
    addUsernameDigestHeader(root, ns_env, d->username, d->password, d->time_offset);
    xmlNodePtr body = xmlNewTextChild(root, ns_env, BAD_CAST "Body", NULL);
    xmlNodePtr op = xmlNewTextChild(body, ns_trt, BAD_CAST "GetSnapshotUri", NULL);
    xmlNewTextChild(op, ns_trt, BAD_CAST "ProfileToken", BAD_CAST d->profileToken);
    char cmd[4096] = {0};
    addHttpHeader(doc, root, d->xaddrs, d->media_service, cmd, 4096); /* frees doc */
    if (request_file != NULL) {
        FILE *f = fopen(request_file, "wb");
        if (f == NULL || fwrite(cmd, 1, strlen(cmd), f) != strlen(cmd) || fclose(f) != 0) {
            strcpy(d->last_error, "cannot write the request file");
            return -1;
        }
    }
    xmlDocPtr reply = sendCommandToCamera(cmd, d->xaddrs);
    if (reply != NULL) {
        getXmlValue(reply, BAD_CAST "//s:Body//trt:GetSnapshotUriResponse//trt:MediaUri//tt:Uri", uri, 1024);
        result = checkForXmlErrorMsg(reply, d->last_error);
        xmlFreeDoc(reply);
    } else {
        result = -1;
        strcpy(d->last_error, "No XML reply");
    }
    return result;
}

/* A JSON string: quotes, backslashes and control characters escaped (the error text is the device's). */
static void json_str(const char *key, const char *value) {
    printf("\"%s\": \"", key);
    for (const unsigned char *c = (const unsigned char *)value; *c; c++) {
        if (*c == '"' || *c == '\\')
            printf("\\%c", *c);
        else if (*c < 0x20)
            printf("\\u%04x", *c);
        else
            putchar(*c);
    }
    printf("\", ");
}

int main(int argc, char **argv) {
    if (argc != 4 && argc != 5) {
        fprintf(stderr, "usage: %s DEVICE_SERVICE_URL USER PASSWORD [REQUEST_FILE]\n", argv[0]);
        return 2;
    }
    /* OnvifData's fields are fixed-size buffers that libonvif strcpy's into: refuse what would not fit. */
    if (strlen(argv[1]) >= 128 || strlen(argv[2]) >= 128 || strlen(argv[3]) >= 128) {
        fprintf(stderr, "addcam: an argument is longer than libonvif's 127 characters\n");
        return 2;
    }
    if (argc == 5)
        request_file = argv[4];

    static struct OnvifData d; /* static: ~20 KiB, zeroed */
    clearData(&d);
    xmlInitParser();
    strcpy(d.xaddrs, argv[1]);
    strcpy(d.username, argv[2]);
    strcpy(d.password, argv[3]);
    /* What prepareOnvifData does after discovery: the device service as "POST <path> HTTP/1.1\r\n". */
    strcpy(d.device_service, argv[1]);
    extractOnvifService(d.device_service, true);

    char snapshot_uri[1024] = {0};
    const char *step = NULL;
    if (getTimeOffset(&d) != 0)
        step = "GetSystemDateAndTime";
    else if (getCapabilities(&d) != 0)
        step = "GetCapabilities";
    else if (d.media_service[0] == '\0') {
        step = "GetCapabilities";
        strcpy(d.last_error, "no media service in the capabilities");
    } else if (getDeviceInformation(&d) != 0)
        step = "GetDeviceInformation";
    else if (getFirstProfileToken(&d) != 0)
        step = "GetProfiles";
    else if (d.profileToken[0] == '\0') {
        step = "GetProfiles";
        strcpy(d.last_error, "no profile");
    } else if (getProfile(&d) != 0)
        step = "GetProfile";
    else if (getStreamUri(&d) != 0)
        step = "GetStreamUri";
    else if (get_snapshot_uri(&d, snapshot_uri) != 0)
        step = "GetSnapshotUri";

    printf("{");
    json_str("step", step != NULL ? step : "");
    json_str("error", step != NULL ? d.last_error : "");
    json_str("media_service", d.media_service);
    json_str("serial_number", d.serial_number);
    json_str("profile_token", d.profileToken);
    json_str("encoder_token", d.videoEncoderConfigurationToken);
    json_str("stream_uri", d.stream_uri);
    json_str("snapshot_uri", snapshot_uri);
    printf("\"width\": %d, \"height\": %d, \"time_offset\": %ld, \"ok\": %s}\n", d.width, d.height,
           (long)d.time_offset, step == NULL ? "true" : "false");
    xmlCleanupParser();
    return step == NULL ? 0 : 1;
}
