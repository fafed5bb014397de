"""lbm.safety"""
