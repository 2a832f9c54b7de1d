# -*- coding: utf-8 -*-
"""docs/s3-bucket-policy.json: valid, least privilege, and enough for every S3 call the collection makes."""

import glob
import json
import os
import re

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
POLICY = os.path.join(ROOT, 'docs', 's3-bucket-policy.json')
BUCKET = 'arn:aws:s3:::modulo-backups'
PREFIX = 'database-backups/'
# boto3 client call -> the IAM actions S3 checks for it (multipart uploads of upload_file included).
CALLS = {
    'put_object': {'s3:PutObject'},
    'upload_file': {'s3:PutObject', 's3:AbortMultipartUpload', 's3:ListMultipartUploadParts'},
    'head_object': {'s3:GetObject'},
    'get_object': {'s3:GetObject'},
    'download_file': {'s3:GetObject'},
    'list_objects_v2': {'s3:ListBucket'},
    'delete_object': {'s3:DeleteObject'},
    'delete_objects': {'s3:DeleteObject'},
}


@pytest.fixture(scope='module')
def statements():
    with open(POLICY) as handle:
        policy = json.load(handle)
    assert policy['Version'] == '2012-10-17'
    sids = [s['Sid'] for s in policy['Statement']]
    assert len(sids) == len(set(sids))
    return dict((s['Sid'], s) for s in policy['Statement'])


def as_list(value):
    return value if isinstance(value, list) else [value]


def test_insecure_transport_is_denied_on_the_bucket_and_its_objects(statements):
    deny = statements['DenyInsecureTransport']
    assert deny['Effect'] == 'Deny' and deny['Principal'] == '*' and deny['Action'] == 's3:*'
    assert sorted(as_list(deny['Resource'])) == [BUCKET, BUCKET + '/*']
    assert deny['Condition'] == {'Bool': {'aws:SecureTransport': 'false'}}


def test_uploads_without_server_side_encryption_are_denied(statements):
    wrong = statements['DenyUnencryptedObjectUploads']
    missing = statements['DenyUploadsWithoutEncryptionHeader']
    for deny in (wrong, missing):
        assert deny['Effect'] == 'Deny' and deny['Principal'] == '*' and deny['Action'] == 's3:PutObject'
        assert deny['Resource'] == BUCKET + '/*'
    assert wrong['Condition']['StringNotEquals']['s3:x-amz-server-side-encryption'] == ['AES256', 'aws:kms']
    assert missing['Condition'] == {'Null': {'s3:x-amz-server-side-encryption': 'true'}}


def test_allows_are_limited_to_one_principal_and_the_prefix(statements):
    allows = [s for s in statements.values() if s['Effect'] == 'Allow']
    assert allows
    for allow in allows:
        assert allow['Principal'] != '*' and list(allow['Principal']) == ['AWS']
        assert not [a for a in as_list(allow['Action']) if '*' in a]
        for resource in as_list(allow['Resource']):
            assert resource == BUCKET or resource == BUCKET + '/' + PREFIX + '*', resource
            if resource == BUCKET:  # bucket-level: listing only, and only under the prefix
                assert as_list(allow['Action']) == ['s3:ListBucket']
                assert allow['Condition']['StringLike']['s3:prefix'] == [PREFIX, PREFIX + '*']


def test_the_policy_allows_every_s3_call_the_collection_makes_and_no_other_action(statements):
    allowed = set()
    for statement in statements.values():
        if statement['Effect'] == 'Allow':
            allowed.update(as_list(statement['Action']))
    sources = ''
    # Every file below module_utils, the wal package (the archive command's own S3 calls) included.
    for path in glob.glob(os.path.join(ROOT, 'plugins', 'module_utils', '**', '*.py'), recursive=True):
        with open(path) as handle:
            sources += handle.read()
    used = set(re.findall(r'client\.([a-z_0-9]+)\(', sources))
    assert used, 'no S3 client calls found: the pattern no longer matches the code'
    unknown = used - set(CALLS)
    assert not unknown, 'S3 calls without a known IAM action (add them to CALLS and the policy): %s' % unknown
    needed = set()
    for call in used:
        needed |= CALLS[call]
    assert needed == allowed
